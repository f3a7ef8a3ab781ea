"""`qfair dump --text`: a plain text scored like llama-perplexity (the `text`
dump kind), its alignment rules, and its analysis.

Oracle for the rows: the model run by hand in the test on each chunk (BOS
substituted for the first token where the tokenizer adds one), log-softmax of
the positions n_ctx//2 .. n_ctx-2."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from conftest import requires_smollm2  # noqa: E402

from qfair.analyze import compare  # noqa: E402
from qfair.cli import main  # noqa: E402
from qfair.dump import DumpError, open_dump  # noqa: E402

TEXT = ("The lighthouse keeper counted ships the way other people count sheep. Each night he wrote their names "
        "in a ledger, and each morning he read them back to the gulls, who were not impressed. In winter the "
        "ledger grew thin; in summer it needed a second volume. Nobody asked him why he kept it, and he never "
        "said. When he retired, the new keeper found forty years of ships and one pressed flower between the "
        "pages for the year the storm took the pier.\n")


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model, one_torch_thread):
    root = tmp_path_factory.mktemp("text")
    f = root / "story.txt"
    f.write_text(TEXT, encoding="utf-8")
    return {"root": root, "text": f, "llama": tiny_model("llama", 4), "llama2": tiny_model("llama", 5),
            "bloom": tiny_model("bloom", 4)}


def _dump(*args):
    return CliRunner().invoke(main, ["dump", "--no-progress", *map(str, args)])


@pytest.fixture(scope="module")
def two(env):
    out = {}
    for name, model in (("base", env["llama"]), ("quant", env["llama2"])):
        d = env["root"] / name
        r = _dump("--model", model, "--text", env["text"], "--ctx", 24, "--chunks", 3, "--out", d,
                  "--store-dtype", "f32")
        assert r.exit_code == 0, r.output
        out[name] = d
    return out


def _oracle_rows(model_dir, chunk_ids, ctx):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([chunk_ids])
    if tok("a")["input_ids"][0] == tok.bos_token_id:
        ids[0, 0] = tok.bos_token_id
    with torch.no_grad():
        logits = m(ids).logits[0]
    return torch.log_softmax(logits[ctx // 2:ctx - 1].float(), -1).numpy()


def test_text_dump_tables_and_rows(env, two):
    from transformers import AutoTokenizer

    d = open_dump(two["base"])
    assert d.kind.name == "text" and d.is_complete
    tok = AutoTokenizer.from_pretrained(env["llama"])
    text = TEXT[:-1]  # one trailing newline is dropped, as llama-perplexity -f does
    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]  # the tokenizer adds BOS
    ex = d.examples
    assert ex.height == 3 and ex["example_id"].to_list() == ["chunk-00000", "chunk-00001", "chunk-00002"]
    chunks = [json.loads(e) for e in ex["extras"]]
    assert [c["tokens"] for c in chunks] == [ids[k * 24:(k + 1) * 24] for k in range(3)]
    assert chunks[0]["first"] == 12 and chunks[0]["n_ctx"] == 24
    t = d.tokens
    assert t.height == 3 * 11 and t["pos"].to_list()[:11] == list(range(13, 24))
    assert t["target"].to_list()[:11] == ids[13:24] and t["target"].to_list()[11:22] == ids[24 + 13:48]
    assert t["row"].to_list() == list(range(33)) and set(t["choice"]) == {0}
    rows = np.concatenate([np.asarray(b) for b in d.logit_blocks()])
    for k in range(3):  # chunk 1 and 2 start with a text token, replaced by BOS for the forward pass
        want = _oracle_rows(env["llama"], ids[k * 24:(k + 1) * 24], 24)
        np.testing.assert_allclose(rows[k * 11:(k + 1) * 11], want, atol=2e-5)
    lp = rows[np.arange(33), t["target"].to_numpy()]
    np.testing.assert_allclose(t["logprob"].to_numpy(), lp, atol=1e-6)
    m = d.manifest
    assert m["scoring"]["bos_replaces_first_token"] is True and m["tasks"][0]["prompt_format_version"]
    assert m["tasks"][0]["n_ctx"] == 24 and m["run"]["config"]["ctx"] == 24


def test_text_dump_without_bos(env, tmp_path):
    """bloom's tokenizer adds no BOS: the first chunk token is a text token and nothing is replaced."""
    from transformers import AutoTokenizer

    r = _dump("--model", env["bloom"], "--text", env["text"], "--ctx", 20, "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    d = open_dump(tmp_path / "b")
    tok = AutoTokenizer.from_pretrained(env["bloom"])
    ids = tok(TEXT[:-1], add_special_tokens=False)["input_ids"]
    assert d.examples.height == len(ids) // 20  # all whole chunks by default
    first = json.loads(d.examples["extras"][1])["tokens"]
    assert first == ids[20:40]
    rows = np.asarray(d.logit_blocks()[0][9:18], dtype=np.float32)  # chunk 1, stored as f16
    np.testing.assert_allclose(rows, _oracle_rows(env["bloom"], first, 20), rtol=1e-3, atol=5e-3)  # float16


def test_two_text_dumps_analyze_with_llamacpp_summary(two, tmp_path):
    c = compare(two["base"], two["quant"], bootstrap=200)
    ts = {r["statistic"]: r["value"] for r in c.extra["text_summary"].iter_rows(named=True)}
    tt = c.tokens
    # the llama.cpp figures agree with qfair's token table on the same rows (rows stored as float32 log-softmax;
    # nothing below -16 in a tiny model's distributions, so the truncated KL sum is the whole KL)
    assert ts["kld_mean"] == pytest.approx(tt["kl_pq"].mean(), rel=1e-5)
    assert ts["ppl_q"] == pytest.approx(np.exp(-tt["logprob_q"].mean()), rel=1e-5)
    assert ts["ppl_base"] == pytest.approx(np.exp(-tt["logprob_p"].mean()), rel=1e-5)
    assert ts["same_top_p"] == pytest.approx(tt["top1_agree"].mean())
    assert ts["dp_mean"] == pytest.approx(tt["delta_p"].mean(), abs=1e-6)
    assert ts["kld_max"] == pytest.approx(tt["kl_pq"].max(), rel=1e-5)
    assert c.extra["text_chunks"].height == 3
    assert c.summary.filter(c.summary["metric"] == "kl_pq")["n"].to_list() == [3]  # bootstrap over chunks
    # fewer than 100 scored tokens: llama.cpp prints no summary, only the chunk table
    from qfair.analyze.text import format_llamacpp

    lines = format_llamacpp(c.extra["text_summary"], c.extra["text_chunks"], "quant")
    assert len(lines) == 5 and lines[1].startswith("   1 ") and lines[-1] == ""


def test_text_dumps_of_different_settings_do_not_align(env, two, tmp_path):
    r = _dump("--model", env["llama2"], "--text", env["text"], "--ctx", 20, "--chunks", 3, "--out", tmp_path / "c20")
    assert r.exit_code == 0, r.output
    with pytest.raises(DumpError, match="chunks of 24 vs 20 tokens"):
        compare(two["base"], tmp_path / "c20", bootstrap=10)
    other = tmp_path / "other.txt"
    other.write_text(TEXT.replace("sheep", "goats"), encoding="utf-8")
    r = _dump("--model", env["llama2"], "--text", other, "--ctx", 24, "--chunks", 3, "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["analyze", str(two["base"]), str(tmp_path / "o"), "--out", str(tmp_path / "a")])
    assert r.exit_code == 1 and "chunk 1 token 9 differs" in r.output and "different texts" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_text_dump_errors(env, tmp_path):
    r = _dump("--model", env["llama"], "--text", env["text"], "--out", tmp_path / "x")
    assert r.exit_code == 2 and "--text needs --ctx" in r.output
    r = _dump("--model", env["llama"], "--ctx", 16, "--out", tmp_path / "x")
    assert r.exit_code == 2 and "go with --text" in r.output
    r = _dump("--model", env["llama"], "--text", env["text"], "--ctx", 16, "--tasks", "piqa", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "drop --tasks" in r.output
    r = _dump("--model", env["llama"], "--text", env["text"], "--ctx", 200, "--out", tmp_path / "x")
    assert r.exit_code == 1 and "fewer than 2 x --ctx = 400" in r.output and "story.txt" in r.output
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe not utf-8")
    r = _dump("--model", env["llama"], "--text", bad, "--ctx", 16, "--out", tmp_path / "x")
    assert r.exit_code == 1 and "not UTF-8" in r.output and len(r.output.strip().splitlines()) == 1


@requires_smollm2
@pytest.mark.slow
def test_embedded_model_text_dump_agrees_with_llamacpp_file(tmp_path, one_torch_thread):
    """qfair's float model and llama.cpp's run of the same GGUF on the same text:
    the same tokens (all 4 x 52), and distributions a few thousandths of a nat apart."""
    from pathlib import Path

    from qfair.importers.llamacpp import import_llamacpp

    data = Path(__file__).parent / "data" / "llamacpp"
    r = _dump("--text", data / "text.txt", "--ctx", 52, "--chunks", 4, "--out", tmp_path / "q", "--store-dtype", "f32")
    assert r.exit_code == 0, r.output
    import_llamacpp(data / "base_c52.kld.xz", tmp_path / "l", tokenizer="smollm2-135m", progress=False)
    c = compare(tmp_path / "l", tmp_path / "q", bootstrap=200)  # aligned: every token of every chunk agrees
    ts = {r["statistic"]: r["value"] for r in c.extra["text_summary"].iter_rows(named=True)}
    assert ts["kld_mean"] < 0.01 and ts["same_top_p"] >= 0.9 and abs(ts["ln_ppl_ratio"]) < 0.02
    assert c.tokens["kl_pq"].mean() < 0.01


def test_interrupted_text_dump_resumes_to_the_same_files(env, tmp_path):
    import functools

    from qfair.dump.text import run_text_dump
    from qfair.models import load_model

    loaded = load_model(str(env["llama"]), progress=False)
    kw = {"ctx": 16, "chunks": 5, "shard_rows": 14, "progress": False}  # two chunks (7 rows each) per shard
    run_text_dump(tmp_path / "full", loaded, env["text"], **kw)
    orig = loaded.model.forward
    calls = {"n": 0}

    @functools.wraps(orig)
    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return orig(*a, **k)

    loaded.model.forward = flaky
    with pytest.raises(KeyboardInterrupt):
        run_text_dump(tmp_path / "cut", loaded, env["text"], **kw)
    part = open_dump(tmp_path / "cut")
    assert part.status == "partial" and len(part.manifest["shards"]) == 1
    del loaded.model.forward
    s = run_text_dump(tmp_path / "cut", loaded, env["text"], resume=True, **kw)
    assert s.resumed_from_shard == 1
    a, b = open_dump(tmp_path / "full"), open_dump(tmp_path / "cut")
    for x, y in zip(a.logit_paths, b.logit_paths):
        assert x.read_bytes() == y.read_bytes()
    assert (tmp_path / "full" / "tokens.parquet").read_bytes() == (tmp_path / "cut" / "tokens.parquet").read_bytes()
