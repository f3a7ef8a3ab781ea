"""The reference study's own measures (Proskurina et al. 2024), reproduced under
their names: conf_pos / conf_neg, the Jensen-Shannon distance of the choice
distributions, the study's ACE / MCE estimators with their quirks, and the
paired t-test -- each against an oracle written here (plain loops over the
published definitions, hand-computed cases) or scipy."""
from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

from qfair import stats
from qfair.analyze.study import study_ace, study_calibration, study_mce


# ---------------------------------------------------------------- loop oracles
def ace_loops(probs, y, ranges=15, binary_bins=100):
    """The study's calibration error by its definition, one example at a time."""
    n, k = probs.shape
    c = [max(r) for r in probs]
    pred = [int(np.argmax(r)) for r in probs]
    if k == 2:  # label-index ECE with equal-width bins (np.digitize on arange(0, 1, 1/bins))
        edges = np.arange(0.0, 1.0, 1.0 / binary_bins)
        groups: dict[int, list[int]] = {}
        for i in range(n):
            groups.setdefault(int(np.digitize(c[i], edges)), []).append(i)
        return sum(len(g) / n * abs(np.mean([c[i] for i in g]) - np.mean([y[i] for i in g])) for g in groups.values())
    step = n // ranges
    srt = sorted(c)
    thr = [srt[r * step] for r in range(ranges)]
    bins = []
    for i in range(n):
        first = next((r for r in range(ranges) if c[i] <= thr[r]), None)
        bins.append(0 if first is None else first)
    total = 0.0
    for r in range(ranges):
        for cls in range(k):
            cell = [i for i in range(n) if bins[i] == r and y[i] == cls]
            if cell:
                total += abs(np.mean([pred[i] == cls for i in cell]) - np.mean([c[i] for i in cell]))
    return total / (k * ranges)


def mce_loops(probs, y, bins=100):
    n, k = probs.shape
    c = [max(r) for r in probs]
    pred = [int(np.argmax(r)) for r in probs]
    edges = np.arange(0.0, 1.0, 1.0 / bins)
    d = [int(np.digitize(v, edges)) for v in c]
    if k == 2:
        gaps = []
        for b in sorted(set(d)):
            cell = [i for i in range(n) if d[i] == b]
            gaps.append(np.mean([c[i] for i in cell]) - np.mean([y[i] for i in cell]))
        return max(gaps)
    best = -1.0
    for b in range(bins):                    # bin index `bins` (c >= 1 - 1/bins) is never visited
        for cls in range(k):
            cell = [i for i in range(n) if d[i] == b and y[i] == cls]
            if cell:
                best = max(best, abs(np.mean([pred[i] == cls for i in cell]) - np.mean([c[i] for i in cell])))
    return best


def _random_probs(seed, n, k, sharp=2.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, sharp, (n, k))
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), rng.integers(0, k, n)


@pytest.mark.parametrize("k,n,seed", [(4, 60, 0), (5, 15, 1), (3, 200, 2), (4, 31, 3), (2, 80, 4), (2, 7, 5)])
def test_study_estimators_against_loops(k, n, seed):
    p, y = _random_probs(seed, n, k)
    assert study_ace(p, y)[0] == pytest.approx(ace_loops(p, y), abs=1e-12)
    assert study_mce(p, y)[0] == pytest.approx(mce_loops(p, y), abs=1e-12)
    assert study_ace(p, y, ranges=7, binary_bins=10)[0] == pytest.approx(ace_loops(p, y, 7, 10), abs=1e-12)
    assert study_mce(p, y, bins=10)[0] == pytest.approx(mce_loops(p, y, 10), abs=1e-12)


@pytest.mark.parametrize("k", [2, 4])
def test_study_estimators_on_resamples_equal_the_expanded_data(k):
    p, y = _random_probs(9, 45, k)
    w = np.stack([stats.bootstrap_counts(45, 2, b) for b in range(12)]).astype(float)
    a, m = study_ace(p, y, w), study_mce(p, y, w)
    for b in range(12):
        idx = np.repeat(np.arange(45), w[b].astype(int))
        assert a[b] == pytest.approx(ace_loops(p[idx], y[idx]), abs=1e-12)
        assert m[b] == pytest.approx(mce_loops(p[idx], y[idx]), abs=1e-12)


@pytest.mark.parametrize("k,bins", [(2, (100, 100)), (2, (10, 30)), (3, (15, 100))])
def test_study_calibration_equals_each_estimator_alone(k, bins):
    # one call shares the binary cell sums between the two estimators when their bins agree
    p, y = _random_probs(12, 70, k)
    w = np.stack([stats.bootstrap_counts(70, 4, b) for b in range(25)]).astype(float)
    both = study_calibration(p, y, w, ranges=7, binary_bins=bins[0], bins=bins[1])
    np.testing.assert_array_equal(both["ace_study"], study_ace(p, y, w, ranges=7, binary_bins=bins[0]))
    np.testing.assert_array_equal(both["mce_study"], study_mce(p, y, w, bins=bins[1]))
    for b in (0, 24):
        idx = np.repeat(np.arange(70), w[b].astype(int))
        assert both["mce_study"][b] == pytest.approx(mce_loops(p[idx], y[idx], bins[1]), abs=1e-12)


def test_hand_computed_quirks():
    # K = 3, N = 4, R = 2 ranges: step 2, thresholds sorted(c)[0], sorted(c)[2]
    p = np.array([[0.5, 0.3, 0.2],    # c 0.5, pred 0
                  [0.2, 0.7, 0.1],    # c 0.7, pred 1
                  [0.1, 0.1, 0.8],    # c 0.8, pred 2  -> above the last threshold: range 0
                  [0.6, 0.2, 0.2]])   # c 0.6, pred 0
    y = np.array([0, 0, 2, 1])
    # thresholds 0.5, 0.7; ranges: [0.5 -> 0], [0.7 -> 1], [0.8 -> none -> 0], [0.6 -> 1]
    # cells: (0, y0): ex0 acc 1 conf .5 -> .5; (0, y2): ex2 acc 1 conf .8 -> .2;
    #        (1, y0): ex1 acc 0 conf .7 -> .7;  (1, y1): ex3 acc 0 conf .6 -> .6
    assert study_ace(p, y, ranges=2)[0] == pytest.approx((0.5 + 0.2 + 0.7 + 0.6) / (3 * 2))
    # MCE, 10 bins: c = 0.5, 0.7, 0.8, 0.6 land in bins 6, 8, 9, 7 (np.digitize on 0, 0.1, ..., 0.9);
    # bin 9 is visited (< 10): the largest |acc - conf| is ex1's 0.7
    assert study_mce(p, y, bins=10)[0] == pytest.approx(0.7)
    # every confidence >= 1 - 1/bins: no visited cell -> -1
    sharp = np.array([[0.995, 0.003, 0.002], [0.001, 0.998, 0.001]])
    assert study_mce(sharp, np.array([0, 1]), bins=100)[0] == -1.0
    # binary "ECE" bins confidence against the label index, not correctness: a perfectly
    # calibrated and always-correct model whose gold is class 1 still scores |c - 1|
    pb = np.array([[0.3, 0.7], [0.3, 0.7]])
    assert study_ace(pb, np.array([1, 1]))[0] == pytest.approx(0.3)
    assert study_ace(pb, np.array([0, 0]))[0] == pytest.approx(0.7)
    # the binary MCE is signed
    assert study_mce(pb, np.array([1, 1]))[0] == pytest.approx(-0.3)
    # fewer examples than ranges: the study's code cannot run; NaN here
    assert math.isnan(study_ace(_random_probs(0, 10, 4)[0], np.zeros(10, int))[0])


# ---------------------------------------------------------------- through compare()
@pytest.fixture(scope="module")
def cmp(tmp_path_factory):
    pytest.importorskip("bitsandbytes")
    from qfair.analyze import compare
    from qfair.dump.run import dump
    from qfair.models.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("study")
    model = make_tiny_model("llama", root / "tiny", seed=8)
    for q in ("none", "bnb-nf4"):
        dump(root / q, model=str(model), quant=q, tasks=["arc_easy", "piqa", "crows_pairs_english"], limit=24,
             progress=False)
    return compare(root / "none", root / "bnb-nf4", bootstrap=300, seed=2, ttest=True,
                   bins="15,ace_study=8,mce_study=20", entropy_unit="bits")


def _task(cmp, task):
    return cmp.examples.filter(pl.col("task") == task), cmp.summary.filter(pl.col("task") == task)


def test_choice_js_near_equal_and_extreme_distributions():
    from decimal import Decimal, getcontext

    from qfair.analyze.compare import choice_js

    getcontext().prec = 120  # more digits than any double has: sums of the inputs are exact
    p = [[0.5 + 1e-9, 0.5 - 1e-9], [1.0, 0.0], [0.2, 0.3, 0.5], [0.0, 1.0]]
    q = [[0.5, 0.5], [0.0, 1.0], [0.2, 0.3, 0.5], [0.5, 0.5]]
    got = choice_js(pl.Series(p, dtype=pl.List(pl.Float64)), pl.Series(q, dtype=pl.List(pl.Float64)))
    for g, a, b in zip(got, p, q):
        js = Decimal(0)
        for x, y in zip(map(Decimal, a), map(Decimal, b)):   # exact binary values, 120-digit logs
            m = (x + y) / 2
            js += (x * (x / m).ln() if x > 0 else 0) + (y * (y / m).ln() if y > 0 else 0)
        want = float((js / 2 / Decimal(2).ln()).sqrt())
        assert g == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_conf_pos_conf_neg(cmp):
    ex, s = _task(cmp, "piqa")
    for side in ("base", "quant"):
        c, a = ex[f"{side}_conf"].to_numpy(), ex[f"{side}_correct"].to_numpy()
        pos = s.filter(pl.col("metric") == "conf_pos")[side][0]
        neg = s.filter(pl.col("metric") == "conf_neg")[side][0]
        assert pos == pytest.approx(c[a == 1].mean()) and neg == pytest.approx(c[a == 0].mean())
    # its bootstrap distribution: each model's ratio recomputed on the exposed draw
    r = s.filter(pl.col("metric") == "conf_pos").row(0, named=True)
    cb, ab = ex["base_conf"].to_numpy(), ex["base_correct"].to_numpy()
    cq, aq = ex["quant_conf"].to_numpy(), ex["quant_correct"].to_numpy()
    d = []
    for b in range(300):
        w = stats.bootstrap_counts(ex.height, 2, b)
        d.append((w * cq * aq).sum() / (w * aq).sum() - (w * cb * ab).sum() / (w * ab).sum())
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(tuple(np.nanquantile(d, [0.025, 0.975])), abs=1e-12)


def test_choice_js_is_scipy_jensenshannon_base2(cmp):
    for task in ("arc_easy", "crows_pairs_english"):
        ex, s = _task(cmp, task)
        want = [jensenshannon(np.array(p), np.array(q), base=2)
                for p, q in zip(ex["base_probs"].to_list(), ex["quant_probs"].to_list())]
        # Tolerance from the conditioning of scipy's formula, not a fixed rtol: it sums K terms
        # p_i log(p_i/m_i) whose logs of rounded ratios each carry ~eps absolute error, so its
        # divergence (the squared distance) is known to ~K*eps absolute however small it is, and
        # the distance d to that over 2d (d(d^2) = 2d dd): ~1e-8 relative at d ~ 1e-4.
        got = ex["choice_js"].to_numpy()
        want = np.asarray(want)
        k = ex["n_choices"].to_numpy()
        div_tol = 4 * k * np.finfo(float).eps + 1e-12 * np.square(want)
        assert np.all(np.abs(got ** 2 - np.square(want)) <= div_tol)
        big = want > 1e-6
        assert np.all(np.abs(got[big] - want[big]) <= div_tol[big] / (2 * want[big]) + 1e-12 * want[big])
        r = s.filter(pl.col("metric") == "choice_js").row(0, named=True)
        assert r["diff"] == pytest.approx(np.mean(want)) and r["p"] is None  # a distance: described, not tested


def test_study_calibration_rows_with_per_metric_bins(cmp):
    ex, s = _task(cmp, "arc_easy")
    k = ex["n_choices"].to_numpy()
    keep = k == k[0]                                  # the study drops examples with another K
    for side in ("base", "quant"):
        probs = np.array([p for p, m in zip(ex[f"{side}_probs"].to_list(), keep) if m])
        y = ex["label"].to_numpy()[keep]
        assert s.filter(pl.col("metric") == "ace_study")[side][0] == pytest.approx(ace_loops(probs, y, ranges=8))
        assert s.filter(pl.col("metric") == "mce_study")[side][0] == pytest.approx(mce_loops(probs, y, bins=20))
    assert s.filter(pl.col("metric") == "ace_study")["n"][0] == int(keep.sum())
    assert cmp.settings["metric_bins"] == {"ace_study": 8, "mce_study": 20}


def test_paired_ttest_column_is_scipy_ttest_rel(cmp):
    ex, s = _task(cmp, "piqa")
    for metric, col in (("p_gold", "p_gold"), ("confidence", "conf"), ("acc", "correct")):
        r = s.filter(pl.col("metric") == metric).row(0, named=True)
        ref = sps.ttest_rel(ex[f"base_{col}"].to_numpy(), ex[f"quant_{col}"].to_numpy()).pvalue
        if math.isnan(ref):
            assert r["p_ttest"] is None
        else:
            assert r["p_ttest"] == pytest.approx(ref, rel=1e-9)


def test_choice_entropy_in_bits(cmp):
    ex, s = _task(cmp, "piqa")
    r = s.filter(pl.col("metric") == "choice_entropy_bits").row(0, named=True)
    assert r["base"] == pytest.approx(ex["base_entropy"].mean() / math.log(2))
    assert "choice_entropy" not in set(s["metric"])
    p = np.array(ex["base_probs"].to_list())
    assert r["base"] == pytest.approx(sps.entropy(p, base=2, axis=1).mean())


def test_bins_option_is_checked():
    from qfair.analyze.summary import parse_bins

    assert parse_bins("10,mce_study=50") == (10, (("mce_study", 50),))
    assert parse_bins({"default": 12, "ace_study": 5}) == (12, (("ace_study", 5),))
    for bad in ("ten", "15,nope=3", "0", "15,ece=x"):
        with pytest.raises(ValueError, match="bins"):
            parse_bins(bad)
