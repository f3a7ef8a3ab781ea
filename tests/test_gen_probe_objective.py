"""Generation probes as the scan's bias objective: the rows of a scan equal an
independent computation (transformers' own greedy ``generate`` one prompt at a
time, a plain float64 forward for the KL along the float model's text, the
lexicon gap written out with numpy); the allocation and the block
recommendation read them; refusals are one line."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pl = pytest.importorskip("polars")

from qfair.generation.lexicon import Lexicon, words  # noqa: E402
from qfair.generation.probe_objective import GenProbeError, GenProbeObjective, gap_between_groups  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPEC = "rtn:bits=3,group_size=16"
N_NEW = 6


def test_gap_between_groups_against_a_loop():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(3, 30))
        x = rng.random(n)
        g = rng.integers(0, 3, n)
        masks = [g == k for k in range(3) if (g == k).any()]
        W = rng.integers(0, 3, size=(4, n)).astype(float)
        got = gap_between_groups(W, x, masks)
        for b in range(4):
            means = [np.sum(W[b, m] * x[m]) / W[b, m].sum() for m in masks if W[b, m].sum() > 0]
            want = max(means) - min(means) if len(means) >= 2 else np.nan
            assert (np.isnan(got[b]) and np.isnan(want)) or got[b] == pytest.approx(want, abs=1e-12)


@pytest.fixture(scope="module")
def gen_scan(tmp_path_factory):
    """A scan of a tiny model with the generation probes as objective, and a
    lexicon made of words the float model writes (so that rates are not all 0)."""
    import qfair.tasks as T
    from qfair.models import load_model
    from qfair.models.tiny import make_tiny_model
    from qfair.sensitivity import Split, run_scan

    root = tmp_path_factory.mktemp("genobj")
    model = make_tiny_model("llama", root / "m", seed=4, layers=2)
    tasks = [T.get("gen_bias_probes", limit=30)]
    probe = GenProbeObjective(tasks, Split.parse("0.5:0"), max_new_tokens=N_NEW, lexicons={})
    f = load_model(str(model), dtype="float32", device="cpu", progress=False)
    texts = [_greedy(f.model, f.tokenizer, d.context)[1] for d in probe.docs]
    vocab = sorted({w for t in texts for w in words(t)})
    lex = Lexicon("probe")
    for w in vocab[::2]:
        lex.add(w)
    obj = GenProbeObjective(tasks, Split.parse("0.5:0"), max_new_tokens=N_NEW, lexicons={"probe": lex},
                            batch_size=5)
    out = root / "scan"
    run_scan(out, model=str(model), quant=SPEC, tasks="arc_easy", limit=4, unit="block", widths="3,8",
             mode="single", resamples=300, progress=False, objectives=[obj])
    return model, out, obj, lex


def _greedy(model, tok, prompt):
    ids = list(tok.encode(prompt))
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=N_NEW, do_sample=False,
                             pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    new = out[0, len(ids):].tolist()
    return ids, tok.decode(new, skip_special_tokens=True), new


def _kl_along(fmodel, qmodel, ids, cont):
    """Mean over the continuation's tokens of KL(float || q), float64, one plain forward each."""
    seq = torch.tensor([ids + cont[:-1]])
    with torch.no_grad():
        lp = fmodel(seq).logits.double().log_softmax(-1)[0, len(ids) - 1:]
        lq = qmodel(seq).logits.double().log_softmax(-1)[0, len(ids) - 1:]
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def _gap_shift(docs, rates_b, rates_q):
    """Mean over axes (with >= 2 groups) of |gap(q) - gap(b)|, gap = max - min of group means."""
    shifts = []
    axes = sorted({(d.extras or {}).get("axis") or "group" for d in docs})
    for a in axes:
        idx = [i for i, d in enumerate(docs) if ((d.extras or {}).get("axis") or "group") == a and d.group
               and np.isfinite(rates_b[i]) and np.isfinite(rates_q[i])]
        groups = sorted({docs[i].group for i in idx})
        if len(groups) < 2:
            continue
        gaps = []
        for r in (rates_q, rates_b):
            means = [np.mean([r[i] for i in idx if docs[i].group == g]) for g in groups]
            gaps.append(max(means) - min(means))
        shifts.append(abs(gaps[0] - gaps[1]))
    return float(np.mean(shifts))


def test_generation_rows_against_an_independent_computation(gen_scan):
    from qfair.models import load_model
    from qfair.sensitivity.scan import read_scan

    model, out, obj, lex = gen_scan
    scan = read_scan(out)
    f = load_model(str(model), dtype="float32", device="cpu", progress=False)
    q = load_model(str(model), quant=SPEC, progress=False)
    tok = f.tokenizer
    base = [_greedy(f.model, tok, d.context) for d in obj.docs]
    quant = [_greedy(q.model, tok, d.context) for d in obj.docs]
    assert [b[2] for b in base] == obj.base.conts  # the float model's texts: transformers' greedy
    langs = [(d.extras or {}).get("lang") for d in obj.docs]
    rb = np.array([lex.rate(t, lg) for (_, t, _), lg in zip(base, langs)])
    rq = np.array([lex.rate(t, lg) for (_, t, _), lg in zip(quant, langs)])
    assert np.nanmax(rb) > 0 and np.nanmax(rq) > 0
    kl = [_kl_along(f.model, q.model, ids, cont) for ids, _, cont in base if cont]
    t = scan["sensitivity"].filter((pl.col("mode") == "uniform") & (pl.col("set") == "gen")
                                   & pl.col("group").is_null())
    got = {r["metric"]: r for r in t.iter_rows(named=True)}
    assert got["gen_kl"]["value"] == pytest.approx(np.mean(kl), rel=2e-2, abs=1e-4)  # float16 rows
    assert got["gen_kl"]["n"] == len(kl) and got["gen_kl"]["ci_low"] <= got["gen_kl"]["value"] <= got["gen_kl"][
        "ci_high"]
    want = _gap_shift(obj.docs, rb, rq)
    assert want > 0 and np.mean(kl) > 0  # the 3-bit model writes other words than the float one
    assert got["lexicon_gap_shift"]["value"] == pytest.approx(want, abs=1e-12)
    assert got["lexicon_gap_shift"]["ci_low"] <= got["lexicon_gap_shift"]["ci_high"]
    # the width rows: the reference width is the uniform row; the objective ran in every state
    w = scan["widths"].filter((pl.col("set") == "gen") & pl.col("group").is_null())
    assert set(w["bits"].to_list()) == {3, 8} and w.height == 2 * 2 * scan["units"].height
    assert scan["manifest"]["settings"]["objectives"][0]["n_prompts"] == len(obj.docs)
    single = scan["sensitivity"].filter((pl.col("mode") == "single") & (pl.col("set") == "gen"))
    assert single.height > 0


def test_allocation_and_recommendation_read_the_generation_rows(gen_scan, tmp_path):
    from qfair.sensitivity.allocate import _objective, allocate
    from qfair.sensitivity.recommend import unit_gains
    from qfair.sensitivity.scan import SensitivityError, read_scan

    _, out, _, _ = gen_scan
    scan = read_scan(out)
    j = _objective(scan["widths"], 2.0, "generation")
    t = scan["widths"].filter(pl.col("group").is_null() & (pl.col("set") == "gen"))
    for (u, b), v in j.items():
        rows = {r["metric"]: r["delta"] for r in t.filter((pl.col("unit") == u) & (pl.col("bits") == b)).iter_rows(
            named=True)}
        assert v == pytest.approx(2.0 * rows["lexicon_gap_shift"] + rows["gen_kl"], abs=1e-12)
    a = allocate(out, budget="6bpw", bias_source="generation", out=tmp_path / "a", measure=False, progress=False)
    assert a.predicted_bytes <= a.budget_bytes
    with pytest.raises(SensitivityError, match="no bias/gap_shift rows"):
        allocate(out, budget="6bpw", out=tmp_path / "b", measure=False, progress=False)  # pairs: none scanned
    with pytest.raises(SensitivityError, match="--bias-source"):
        allocate(out, budget="6bpw", bias_source="nope", out=tmp_path / "c", measure=False, progress=False)
    g = unit_gains(scan, "gen_bias")
    single = scan["sensitivity"].filter((pl.col("mode") == "single") & (pl.col("set") == "gen")
                                        & (pl.col("metric") == "lexicon_gap_shift") & pl.col("group").is_null())
    assert g == dict(zip(single["unit"].to_list(), single["delta"].to_list()))


def test_refusals(tmp_path):
    import qfair.tasks as T
    from qfair.sensitivity import Split

    with pytest.raises(GenProbeError, match="not a generation task"):
        GenProbeObjective([T.get("arc_easy", limit=2)], Split.parse("0.5:0"))
    with pytest.raises(GenProbeError, match="--gen-tokens"):
        GenProbeObjective([T.get("gen_bias_probes", limit=20)], Split.parse("0.5:0"), max_new_tokens=0)
    one_group = tmp_path / "p.jsonl"
    one_group.write_text("".join(f'{{"prompt": "The nurse number {i} said", "group": "a", "axis": "x"}}\n'
                                 for i in range(20)))
    with pytest.raises(GenProbeError, match="two groups"):
        GenProbeObjective([T.get("gen_prompts", data_file=one_group)], Split.parse("0.5:0"))
    r = subprocess.run([sys.executable, "-m", "qfair", "sensitivity", "--quant", SPEC, "--gen-probes", "arc_easy",
                        "--out", str(tmp_path / "o"), "--no-progress"], capture_output=True, text=True)
    assert r.returncode == 1 and "not a generation task" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
