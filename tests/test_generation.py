"""Generation on tiny offline models: decoding, teacher forcing, the dump kind,
references, analysis and the report, end to end.

Oracles: a step-by-step full-sequence recomputation for teacher-forced rows,
unbatched generation and transformers' ``model.generate`` for batched greedy
tokens, the same seed at other batch sizes for sampling, a plain frequency
count for the nucleus sampler, the reference dump's own tables for alignment,
and byte-for-byte comparison with an uninterrupted run for resume.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("polars")

from test_dump_support import data_files, load_tiny  # noqa: E402

import qfair.tasks as T  # noqa: E402
from qfair.dump import DumpError, open_dump  # noqa: E402
from qfair.generation.decode import (  # noqa: E402
    Decoder,
    DecodeSettings,
    LanguageModel,
    encode_prompt,
    row_seed,
    sample_from_logits,
)
from qfair.generation.producer import run_generation_dump  # noqa: E402
from qfair.generation.teacher import teacher_force  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["Il était une fois", "The river keeps its own calendar", "A nurse, an engineer and a teacher shared",
           "Numbers", "Le chat dort sur la chaise et"]


def _lm(tiny_model, arch: str, dtype=torch.float32) -> LanguageModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model(arch)
    m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    return LanguageModel(m, AutoTokenizer.from_pretrained(path))


# ---------------------------------------------------------------------------
# decoding and teacher forcing


@pytest.mark.parametrize("arch", ["llama", "bloom", "opt"])
def test_batched_greedy_equals_unbatched_and_generate(tiny_model, arch):
    lm = _lm(tiny_model, arch)
    prompts = [encode_prompt(lm.tokenizer, p) for p in PROMPTS]
    d = Decoder(lm, DecodeSettings(max_new_tokens=16))
    batched = d.generate(prompts)
    for p, c in zip(prompts, batched):
        alone = d.generate([p])[0]
        assert c.ids == alone.ids
        assert len(c.ids) == 16 and c.stop == "length"
        ref = lm.model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                max_new_tokens=16, do_sample=False, pad_token_id=lm.pad_id)
        assert c.ids == ref[0, len(p):].tolist()[:len(c.ids)]
        # the stored rows are the rows of the generated tokens: their scalars agree
        lp = c.rows.astype(np.float32)
        assert np.array_equal(lp.argmax(1), c.scalars["argmax"])


@pytest.mark.parametrize("arch", ["llama", "bloom"])
def test_teacher_forced_rows_equal_step_by_step(tiny_model, arch):
    lm = _lm(tiny_model, arch)
    prompts = [encode_prompt(lm.tokenizer, p) for p in PROMPTS]
    rng = np.random.default_rng(0)
    conts = [rng.integers(3, 500, size=int(n)).tolist() for n in (7, 1, 12, 4, 9)]
    tf = teacher_force(lm, prompts, conts, store_dtype="f32")
    worst = 0.0
    for p, c, t in zip(prompts, conts, tf):
        assert t.ids == c and t.rows.shape == (len(c), lm.model.config.vocab_size)
        for i in range(len(c)):
            with torch.no_grad():
                logits = lm.model(torch.tensor([p + c[:i]])).logits[0, -1]
            want = torch.log_softmax(logits.float(), -1).numpy()
            worst = max(worst, float(np.abs(t.rows[i] - want).max()))
            assert t.scalars["logprob"][i] == pytest.approx(want[c[i]], abs=1e-4)
            assert t.scalars["rank"][i] == 1 + int((want > want[c[i]]).sum())
    assert worst <= 1e-4


def test_generation_rows_equal_teacher_forcing_on_own_text(tiny_model):
    lm = _lm(tiny_model, "llama")
    prompts = [encode_prompt(lm.tokenizer, p) for p in PROMPTS]
    gen = Decoder(lm, DecodeSettings(max_new_tokens=10), store_dtype="f32").generate(prompts)
    tf = teacher_force(lm, prompts, [g.ids for g in gen], store_dtype="f32")
    for g, t in zip(gen, tf):
        assert np.abs(g.rows - t.rows).max() <= 1e-4
        np.testing.assert_allclose(g.scalars["logprob"], t.scalars["logprob"], atol=1e-4)


def test_same_seed_same_sample_at_any_batch_size(tiny_model):
    lm = _lm(tiny_model, "llama")
    prompts = [encode_prompt(lm.tokenizer, p) for p in PROMPTS]
    seeds = [row_seed(3, f"ex{i}", 0) for i in range(len(prompts))]
    d = Decoder(lm, DecodeSettings(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=3), keep_rows=False)
    whole = [c.ids for c in d.generate(prompts, seeds)]
    alone = [d.generate([p], [s])[0].ids for p, s in zip(prompts, seeds)]
    pairs = [c.ids for i in range(0, 5, 2) for c in d.generate(prompts[i:i + 2], seeds[i:i + 2])]
    rev = [c.ids for c in d.generate(prompts[::-1], seeds[::-1])][::-1]
    assert whole == alone == pairs == rev
    other = [c.ids for c in d.generate(prompts, [row_seed(4, f"ex{i}", 0) for i in range(5)])]
    assert other != whole                    # the seed matters
    greedy = [c.ids for c in Decoder(lm, DecodeSettings(max_new_tokens=12)).generate(prompts)]
    assert greedy != whole


def test_nucleus_sampler_frequencies():
    # probabilities 0.5, 0.3, 0.15, 0.05: top-p 0.7 keeps the first two -> 0.625 / 0.375
    logits = torch.log(torch.tensor([0.3, 0.05, 0.5, 0.15], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    n = 8000
    draws = np.array([sample_from_logits(logits, 1.0, 0.7, g) for _ in range(n)])
    assert set(draws.tolist()) <= {0, 2}
    f = (draws == 2).mean()
    assert abs(f - 0.625) < 4 * np.sqrt(0.625 * 0.375 / n)
    # temperature 0.5 squares the odds: 0.5^2 : 0.3^2 : 0.15^2 : 0.05^2, top-p 1 keeps all
    draws = np.array([sample_from_logits(logits, 0.5, 1.0, g) for _ in range(n)])
    p = np.array([0.3, 0.05, 0.5, 0.15]) ** 2
    p /= p.sum()
    for k in range(4):
        assert abs((draws == k).mean() - p[k]) < 4 * np.sqrt(p[k] * (1 - p[k]) / n) + 1e-3


def test_eos_stops_one_row_without_touching_the_others(tiny_model):
    lm = _lm(tiny_model, "llama")
    prompts = [encode_prompt(lm.tokenizer, p) for p in PROMPTS[:3]]
    free = Decoder(lm, DecodeSettings(max_new_tokens=8)).generate(prompts)
    lm.eos_ids = frozenset({free[1].ids[2]})         # pretend the third token of prompt 1 is EOS
    stopped = Decoder(lm, DecodeSettings(max_new_tokens=8)).generate(prompts)
    assert stopped[1].stop == "eos" and stopped[1].ids == free[1].ids[:3]
    for i in (0, 2):
        k = next((j for j, t in enumerate(free[i].ids) if t in lm.eos_ids), None)
        assert stopped[i].ids == free[i].ids[: None if k is None else k + 1]


def test_decode_settings_refuse_bad_values():
    for kw, msg in (({"max_new_tokens": 0}, "max-new-tokens"), ({"temperature": -1}, "temperature"),
                    ({"top_p": 0}, "top-p"), ({"samples": 2}, "greedy"), ({"top_p": 0.5}, "sampling only")):
        with pytest.raises(ValueError, match=msg):
            DecodeSettings(**kw)


# ---------------------------------------------------------------------------
# dumps


@pytest.fixture(scope="module")
def gen_env(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("gen")
    prompts = root / "prompts.jsonl"
    rows = [{"id": f"p{i}", "prompt": p, "group": g, "axis": "demo", "lang": lang}
            for i, (p, g, lang) in enumerate(zip(PROMPTS, ["a", "b", "a", "b", "a"], ["fr", "en", "en", "en", "fr"]))]
    rows.append({"id": "markup", "prompt": "<script>alert('x')</script> & <b>bold</b>", "group": "b", "lang": "en"})
    prompts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    path = tiny_model("llama")
    from qfair.models import load_model

    base_loaded = load_model(str(path), progress=False)
    return {"root": root, "prompts": prompts, "model": path, "loaded": base_loaded}


def _tasks(env, limit=None):
    return [T.get("gen_prompts", data_file=env["prompts"], limit=limit), T.get("gen_stories", limit=3)]


def _quant(env, spec: str):
    from qfair.models import load_model

    return load_model(str(env["model"]), quant=spec, progress=False)


@pytest.fixture(scope="module")
def dumps(gen_env):
    st = DecodeSettings(max_new_tokens=10)
    r = gen_env["root"]
    run_generation_dump(r / "base", gen_env["loaded"], _tasks(gen_env), settings=st, shard_rows=25, batch_size=4,
                        progress=False)
    out = {"base": r / "base"}
    for spec in ("bnb-int8", "bnb-nf4"):
        run_generation_dump(r / spec, _quant(gen_env, spec), _tasks(gen_env), settings=st, reference=r / "base",
                            batch_size=3, progress=False)
        out[spec] = r / spec
    # the base model teacher-forced on its own text: every divergence must vanish
    run_generation_dump(r / "self", gen_env["loaded"], _tasks(gen_env), settings=st, reference=r / "base",
                        progress=False)
    out["self"] = r / "self"
    return out


def test_base_dump_tables(dumps, gen_env):
    d = open_dump(dumps["base"])
    assert d.kind.name == "generation" and d.is_complete
    ex = d.examples
    assert ex.height == 9 and ex["label"].to_list() == [-1] * 9 and ex["n_choices"].to_list() == [1] * 9
    g = d.table("generations")
    assert g["source"].to_list() == ["free"] * 9
    tk = d.tokens
    assert tk.height == int(g["n_tokens"].sum()) == d.n_rows
    # generations' rows point at their tokens; the texts decode from the ids; char_ends end at the text's length
    tok = gen_env["loaded"].tokenizer
    for r in g.iter_rows(named=True):
        t = tk.filter((pl.col("example_id") == r["example_id"]) & (pl.col("choice") == r["sample"]))
        assert t["row"].to_list() == list(range(r["first_row"], r["first_row"] + r["n_rows"]))
        assert t["target"].to_list() == r["token_ids"]
        assert r["text"] == tok.decode(r["token_ids"], skip_special_tokens=True)
        assert r["char_ends"][-1] == len(r["text"]) and r["char_ends"] == sorted(r["char_ends"])
        assert r["loglik"] == pytest.approx(float(t["logprob"].cast(pl.Float64).sum()), abs=1e-4)
    # gen_tokens of a base dump = its tokens' scalars
    gt = d.table("gen_tokens")
    assert gt["target"].to_list() == tk["target"].to_list()
    m = json.loads((dumps["base"] / "manifest.json").read_text())
    assert m["generation"]["settings"]["mode"] == "greedy" and m["generation"]["reference"] is None
    assert len(m["shards"]) > 1                     # cut on the fly


def test_reference_dump_aligns_key_by_key(dumps):
    b, q = open_dump(dumps["base"]), open_dump(dumps["bnb-int8"])
    assert b.aligned_with(q) is True
    for key in ("example_id", "choice", "pos", "target", "row"):
        assert b.tokens[key].to_list() == q.tokens[key].to_list()
    assert b.n_rows == q.n_rows
    gq = q.table("generations")
    ref = gq.filter(pl.col("source") == "reference")
    base_free = b.table("generations")
    assert ref["token_ids"].to_list() == base_free["token_ids"].to_list()
    assert ref["text"].to_list() == base_free["text"].to_list()
    free = gq.filter(pl.col("source") == "free")
    assert free.height == 9 and (free["first_row"] == -1).all()
    assert q.table("gen_tokens").height == int(free["n_tokens"].sum())
    m = json.loads((dumps["bnb-int8"] / "manifest.json").read_text())
    assert m["generation"]["reference"]["tokens_sha256"] == b.manifest["tables"]["tokens"]["sha256"]
    assert m["plan"] is not None                     # rows known from the reference


def test_mismatched_reference_is_refused(dumps, gen_env, tiny_model):
    r = gen_env["root"]
    cases = [
        (dict(tasks=_tasks(gen_env), settings=DecodeSettings(max_new_tokens=9)),
         "decoding setting 'max_new_tokens' is 10 there and 9 here"),
        (dict(tasks=_tasks(gen_env, limit=2), settings=DecodeSettings(max_new_tokens=10)),
         "9 prompts there, 5 here"),
        (dict(tasks=[T.get("gen_stories", limit=3), T.get("gen_prompts", data_file=gen_env["prompts"])],
              settings=DecodeSettings(max_new_tokens=10)), "prompt 0 differs"),
    ]
    for kw, msg in cases:
        with pytest.raises(DumpError, match=msg) as e:
            run_generation_dump(r / "refused", gen_env["loaded"], reference=r / "base", progress=False, **kw)
        assert "\n" not in str(e.value)
    other = load_tiny(tiny_model("opt"))  # OPT's tokenizer uses </s> as its BOS
    with pytest.raises(DumpError, match="tokenizer fingerprint field 'bos_token_id' is 1 there and 2 here"):
        run_generation_dump(r / "refused", other, _tasks(gen_env), settings=DecodeSettings(max_new_tokens=10),
                            reference=r / "base", progress=False)
    with pytest.raises(DumpError, match="itself teacher-forced"):
        run_generation_dump(r / "refused", gen_env["loaded"], _tasks(gen_env),
                            settings=DecodeSettings(max_new_tokens=10), reference=r / "bnb-int8", progress=False)


def test_resume_after_interruption_gives_the_same_files(gen_env, monkeypatch):
    import qfair.generation.producer as P

    st = DecodeSettings(max_new_tokens=6, temperature=0.8, samples=2, seed=5)
    r = gen_env["root"]
    run_generation_dump(r / "whole", gen_env["loaded"], _tasks(gen_env), settings=st, shard_rows=20, batch_size=3,
                        progress=False)
    real = P._add_example
    calls = {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(P, "_add_example", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_generation_dump(r / "cut", gen_env["loaded"], _tasks(gen_env), settings=st, shard_rows=20, batch_size=3,
                            progress=False)
    monkeypatch.setattr(P, "_add_example", real)
    assert json.loads((r / "cut" / "manifest.json").read_text())["status"] == "partial"
    s = run_generation_dump(r / "cut", gen_env["loaded"], _tasks(gen_env), settings=st, shard_rows=20, batch_size=3,
                            resume=True, progress=False)
    assert s.resumed_from_shard
    assert data_files(r / "cut") == data_files(r / "whole")
    g = open_dump(r / "whole").table("generations")
    assert sorted(set(g["sample"].to_list())) == [0, 1]


def test_store_none_keeps_scalars(gen_env, dumps):
    r = gen_env["root"]
    run_generation_dump(r / "none", gen_env["loaded"], _tasks(gen_env), settings=DecodeSettings(max_new_tokens=10),
                        store="none", progress=False)
    a, b = open_dump(r / "none"), open_dump(dumps["base"])
    assert a.n_rows == 0 and (a.tokens["row"] == -1).all()
    assert a.tokens["target"].to_list() == b.tokens["target"].to_list()
    # other batch size (32 vs 4): the same tokens, numbers equal up to float rounding
    np.testing.assert_allclose(a.tokens["logprob"].to_numpy(), b.tokens["logprob"].to_numpy(), atol=1e-4)


# ---------------------------------------------------------------------------
# analysis and report


@pytest.fixture(scope="module")
def analysis(dumps, tmp_path_factory):
    from qfair.analyze import compare

    cmp = compare(dumps["base"], [dumps["bnb-int8"], dumps["bnb-nf4"], dumps["self"]], bootstrap=300, seed=1)
    out = tmp_path_factory.mktemp("gen-analysis")
    cmp.write(out, formats=("parquet", "csv", "md"))
    return cmp, out


def test_analysis_has_no_choice_level_statistics(analysis):
    cmp, _ = analysis
    s = cmp.summary
    assert set(s["metric"].to_list()).isdisjoint({"acc", "acc_norm", "ece", "flips"})
    assert {"kl_pq", "js", "top1_agree", "target_logprob"} <= set(s["metric"].to_list())
    assert cmp.calibration.height == 0
    assert set(cmp.extra) == {"gen_summary", "gen_positions", "gen_survival", "gen_language", "gen_bias",
                              "gen_texts"}


def test_self_reference_has_no_divergence(analysis):
    cmp, _ = analysis
    t = cmp.tokens.filter(pl.col("model") == "self")
    assert t["kl_pq"].max() < 1e-5 and t["top1_agree"].min() == 1.0
    gs = cmp.extra["gen_summary"].filter(pl.col("model") == "self")
    ratio = gs.filter(pl.col("metric") == "ppl_ratio")["diff"][0]
    assert ratio == pytest.approx(1.0, abs=1e-4)
    texts = cmp.extra["gen_texts"].filter(pl.col("model") == "self")
    assert texts["identical"].all()


def test_generation_tables_against_the_dumps(analysis, dumps):
    cmp, _ = analysis
    b, q = open_dump(dumps["base"]), open_dump(dumps["bnb-nf4"])
    gb = b.table("generations")
    gq = q.table("generations").filter(pl.col("source") == "free")
    tx = cmp.extra["gen_texts"].filter(pl.col("model") == "bnb-nf4")
    assert tx["base_text"].to_list() == gb["text"].to_list()
    assert tx["quant_text"].to_list() == gq["text"].to_list()
    from qfair.generation import textmetrics as tm

    for r, a, c in zip(tx.iter_rows(named=True), gb["token_ids"].to_list(), gq["token_ids"].to_list()):
        assert r["first_diff"] == tm.first_divergence(a, c)
        assert r["edit_distance"] == pytest.approx(tm.edit_distance_norm(a, c))
    # perplexity of the base text: from the two tokens tables
    tt = cmp.tokens.filter(pl.col("model") == "bnb-nf4")
    task = tt["task"][0]
    sub = tt.filter(pl.col("task") == task)
    want = np.exp(-sub["logprob_q"].mean()) / np.exp(-sub["logprob_p"].mean())
    row = cmp.extra["gen_summary"].filter((pl.col("model") == "bnb-nf4") & (pl.col("task") == task)
                                          & (pl.col("metric") == "ppl_ratio"))
    assert row["diff"][0] == pytest.approx(want, rel=1e-6)
    assert row["ci_low"][0] <= row["diff"][0] <= row["ci_high"][0]
    # survival at t = 0 is every pair; position curve n is the number of prompts reaching the position
    sv = cmp.extra["gen_survival"].filter((pl.col("model") == "bnb-nf4") & (pl.col("task") == task))
    assert sv["share"][0] == 1.0 and sv["n"][0] == tx.filter(pl.col("task") == task).height
    pos = cmp.extra["gen_positions"].filter((pl.col("model") == "bnb-nf4") & (pl.col("task") == task))
    assert pos["kl_pq"][0] == pytest.approx(sub.filter(pl.col("pos") == 0)["kl_pq"].mean(), rel=1e-9)
    assert (pos["kl_pq_low"] <= pos["kl_pq"] + 1e-12).all() and (pos["kl_pq"] <= pos["kl_pq_high"] + 1e-12).all()
    # per-group rows exist for the data file's groups, with the max-min gap
    bias = cmp.extra["gen_bias"].filter((pl.col("model") == "bnb-nf4") & (pl.col("task") == "gen_prompts"))
    assert {"a", "b", "max-min gap"} <= set(bias["group"].to_list())
    assert {"p_holm", "p_bh"} <= set(cmp.extra["gen_summary"].columns)


def test_int8_and_nf4_figures(analysis):
    """The issue's comparison on a tiny random model (figures only, no direction asserted)."""
    cmp, _ = analysis
    for m in ("bnb-int8", "bnb-nf4"):
        kl = cmp.tokens.filter(pl.col("model") == m)["kl_pq"].mean()
        tx = cmp.extra["gen_texts"].filter(pl.col("model") == m)
        print(f"{m}: mean KL {kl:.4f}, identical {tx['identical'].mean():.2f}, "
              f"identical prefix {tx['identical_prefix'].mean():.1f} tokens")
        assert np.isfinite(kl)


def test_without_reference_only_text_level(gen_env, dumps):
    from qfair.analyze import compare

    r = gen_env["root"]
    run_generation_dump(r / "free-nf4", _quant(gen_env, "bnb-nf4"), _tasks(gen_env),
                        settings=DecodeSettings(max_new_tokens=10), progress=False)
    assert open_dump(dumps["base"]).aligned_with(open_dump(r / "free-nf4")) is False
    cmp = compare(dumps["base"], r / "free-nf4", bootstrap=200)
    assert any("only text-level comparisons" in n for n in cmp.notes)
    assert cmp.tokens.height == 0 and cmp.extra.get("gen_positions") is None or \
        cmp.extra["gen_positions"].height == 0
    assert "edit_distance" in cmp.extra["gen_summary"]["metric"].to_list()
    # texts equal those of the nf4 dump made with --reference (same model, same greedy settings)
    a = cmp.extra["gen_texts"]["quant_text"].to_list()
    b = open_dump(dumps["bnb-nf4"]).table("generations").filter(pl.col("source") == "free")["text"].to_list()
    assert a == b


def test_report_escapes_generated_text(analysis):
    from qfair.report import build_report

    _, out = analysis
    rep = build_report(out)
    html = rep.html.read_text(encoding="utf-8")
    assert "id='generation'" in html
    assert "<script>" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    names = {p.name for p in rep.figures}
    assert any(n.startswith("gen_kl_by_position_") for n in names)
    assert any(n.startswith("gen_survival_") for n in names)


def test_cli_dump_analyze_report(gen_env, tmp_path):
    from click.testing import CliRunner

    from qfair.cli import main

    run = CliRunner().invoke
    base, q = tmp_path / "base", tmp_path / "q"
    common = ["--model", str(gen_env["model"]), "--tasks", "gen_stories", "--limit", "2", "--max-new-tokens", "5",
              "--no-progress"]
    res = run(main, ["dump", *common, "--out", str(base)])
    assert res.exit_code == 0, res.output
    assert "2 prompts x 1 sample(s), greedy" in res.output
    res = run(main, ["dump", *common, "--quant", "bnb-int8", "--reference", str(base), "--out", str(q)])
    assert res.exit_code == 0, res.output
    assert "teacher-forced" in res.output
    res = run(main, ["dump", *common[:-3], "--max-new-tokens", "4", "--no-progress", "--reference", str(base),
                     "--out", str(tmp_path / "bad")])
    assert res.exit_code == 1 and "decoding setting 'max_new_tokens'" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = run(main, ["dump", "--model", str(gen_env["model"]), "--tasks", "piqa,gen_stories", "--out",
                     str(tmp_path / "mixed")])
    assert res.exit_code == 1 and "mixes generation tasks" in res.output
    res = run(main, ["analyze", str(base), str(q), "--out", str(tmp_path / "an"), "--bootstrap", "100",
                     "--no-progress", "--lexicon", "bad"])
    assert res.exit_code == 1 and "NAME=FILE" in res.output
    res = run(main, ["analyze", str(base), str(q), "--out", str(tmp_path / "an"), "--bootstrap", "100",
                     "--no-progress", "--scorer", "hf:" + str(tmp_path / "nowhere")])
    assert res.exit_code == 1 and "cannot load a text-classification model" in res.output
    res = run(main, ["analyze", str(base), str(q), "--out", str(tmp_path / "an"), "--bootstrap", "100",
                     "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "an" / "gen_summary.parquet").is_file()
    res = run(main, ["report", str(tmp_path / "an")])
    assert res.exit_code == 0, res.output


def test_classifier_scorer_matches_the_pipeline(gen_env, tmp_path, analysis, dumps):
    """--scorer hf:PATH on a tiny local text-classification model; oracle: transformers' pipeline."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification, pipeline

    from qfair.analyze import compare
    from qfair.generation.scorer import parse_scorer

    tok = AutoTokenizer.from_pretrained(gen_env["model"])
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=3,
                      id2label={0: "neutral", 1: "toxic", 2: "Other label"},
                      label2id={"neutral": 0, "toxic": 1, "Other label": 2}, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg).eval()
    clf = tmp_path / "clf"
    model.save_pretrained(clf)
    tok.save_pretrained(clf)
    scorer = parse_scorer(f"hf:{clf}")
    cmp = compare(dumps["base"], dumps["bnb-nf4"], bootstrap=200, kind_options={"scorer": scorer})
    tx = cmp.extra["gen_texts"]
    pipe = pipeline("text-classification", model=str(clf), tokenizer=str(clf), device="cpu")
    want = [r["label"] for r in pipe(tx["base_text"].to_list(), batch_size=1)]
    for lab, col in (("neutral", "clf_neutral"), ("toxic", "clf_toxic"), ("Other label", "clf_other_label")):
        got = tx[f"base_{col}"].to_list()
        assert got == [float(w == lab) for w in want]
    assert {"clf_neutral", "clf_toxic", "clf_other_label"} <= set(cmp.extra["gen_summary"]["metric"].to_list())
    assert "clf_toxic" in cmp.extra["gen_bias"]["metric"].to_list()


def test_mixing_kinds_refused_before_loading(tmp_path):
    from qfair.dump.run import dump

    with pytest.raises(DumpError, match="mixes generation tasks"):
        dump(tmp_path / "x", model=str(tmp_path / "no-model"), tasks="gen_stories,piqa")
    with pytest.raises(DumpError, match="--reference: generation options"):
        dump(tmp_path / "x", model=str(tmp_path / "no-model"), tasks="piqa", generation={"reference": "r"})
    with pytest.raises(DumpError, match="greedy"):
        dump(tmp_path / "x", model=str(tmp_path / "no-model"), tasks="gen_stories", generation={"samples": 3})
    Path(tmp_path / "x").mkdir()


def test_readme_bloom_example_on_the_tiny_bloom(tiny_model, tmp_path):
    """The README's reproduction of the study's BLOOM example, with the tiny offline
    BLOOM in place of bigscience/bloom-560m: the same commands, end to end."""
    from click.testing import CliRunner

    from qfair.cli import main

    model = str(tiny_model("bloom"))
    story = tmp_path / "fr_story.jsonl"
    story.write_text('{"id": "fr-story", "prompt": "Il était une fois", "lang": "fr"}\n', encoding="utf-8")
    run = CliRunner().invoke
    common = ["--model", model, "--tasks", "gen_prompts", "--data-file", f"gen_prompts={story}",
              "--max-new-tokens", "64", "--no-progress"]
    res = run(main, ["dump", *common, "--out", str(tmp_path / "bloom-base")])
    assert res.exit_code == 0, res.output
    res = run(main, ["dump", *common, "--quant", "bnb-int8", "--reference", str(tmp_path / "bloom-base"),
                     "--out", str(tmp_path / "bloom-int8")])
    assert res.exit_code == 0, res.output
    res = run(main, ["analyze", str(tmp_path / "bloom-base"), str(tmp_path / "bloom-int8"), "--out",
                     str(tmp_path / "bloom-analysis"), "--bootstrap", "200", "--no-progress"])
    assert res.exit_code == 0, res.output
    res = run(main, ["report", str(tmp_path / "bloom-analysis")])
    assert res.exit_code == 0, res.output
    tx = pl.read_parquet(tmp_path / "bloom-analysis" / "gen_texts.parquet")
    assert tx["prompt"].to_list() == ["Il était une fois"] and tx["prompt_lang"].to_list() == ["fr"]
    html = (tmp_path / "bloom-analysis" / "report" / "report.html").read_text(encoding="utf-8")
    assert "Il était une fois" in html


def test_custom_metric_on_teacher_forced_rows(dumps):
    """A custom token metric works unchanged on a generation pair: KL recomputed in
    numpy from the chunks equals the core's kl_pq column."""
    from qfair.analyze import compare

    def kl_numpy(chunk):
        p = np.exp(chunk.p.astype(np.float64))
        return (p * (chunk.p.astype(np.float64) - chunk.q.astype(np.float64))).sum(1)

    cmp = compare(dumps["base"], dumps["bnb-nf4"], bootstrap=100, metrics={"kl_numpy": kl_numpy})
    t = cmp.tokens
    np.testing.assert_allclose(t["kl_numpy"].to_numpy(), t["kl_pq"].to_numpy(), rtol=1e-4, atol=1e-6)
    assert "kl_numpy" in cmp.summary["metric"].to_list()
