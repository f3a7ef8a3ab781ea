"""One interval and one p per summary row (qfair.analyze.intervals): the p-value
inverts the reported interval, so "the interval excludes 0" and "p < alpha"
agree at every level -- checked here on adversarial bootstrap distributions
(ties at 0, lattices, one-sided, constant) for the percentile and BCa
constructions, against numpy's quantiles and the C++ core's BCa endpoints, and
on every row of real analyses."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qfair import stats
from qfair.analyze.intervals import agrees, choose_method, interval_p

ALPHAS = np.r_[np.linspace(0.001, 0.999, 400), [0.01, 0.05, 0.1]]


def _distributions():
    rng = np.random.default_rng(11)
    yield "normal", rng.normal(0.3, 1.0, 4000)
    yield "shifted", rng.normal(2.5, 1.0, 3000)
    yield "negative", rng.normal(-4.0, 1.0, 999)
    yield "lattice", rng.integers(-3, 6, 2001) / 20.0          # many exact zeros and ties
    yield "zeros_and_positive", np.r_[np.zeros(300), rng.exponential(1.0, 700)]
    yield "all_zero", np.zeros(500)
    yield "all_positive", rng.uniform(0.1, 1.0, 800)
    yield "two_values", np.r_[np.full(600, -0.05), np.full(400, 0.05)]
    yield "tiny", np.array([-1.0, 0.5, 2.0])
    yield "one", np.array([0.7])


@pytest.mark.parametrize("name,dist", list(_distributions()))
def test_percentile_p_inverts_the_interval_at_every_level(name, dist):
    r = interval_p(dist, confidence=0.95)
    # endpoints are numpy's linear-interpolation quantiles
    assert r.low == pytest.approx(np.quantile(dist, 0.025), abs=1e-12)
    assert r.high == pytest.approx(np.quantile(dist, 0.975), abs=1e-12)
    for a in ALPHAS:
        if abs(a - r.p) < 1e-9 or a <= 1 / (dist.size + 1):  # below the resolution of B replicates
            continue
        lo, hi = np.quantile(dist, [a / 2, 1 - a / 2])
        assert ((lo > 0) or (hi < 0)) == (r.p < a), (name, a, r.p, lo, hi)


@pytest.mark.parametrize("z0", [-0.9, -0.3, 0.0, 0.2, 0.8])
@pytest.mark.parametrize("accel", [-0.18, -0.05, 0.0, 0.07, 0.19])
def test_bca_p_inverts_the_bca_interval_at_every_level(z0, accel):
    rng = np.random.default_rng(int(100 * (z0 + 1) + 1000 * (accel + 1)))
    for dist in (rng.normal(0.4, 1.0, 3000), rng.normal(-2.2, 1.0, 2000), rng.integers(-2, 4, 2500) / 10.0):
        p = interval_p(dist, confidence=0.95, method="bca", z0=z0, accel=accel).p
        for a in ALPHAS:
            if abs(a - p) < 1e-9 or a <= 1 / (dist.size + 1):
                continue
            r = interval_p(dist, confidence=1 - a, method="bca", z0=z0, accel=accel, tested=False)
            assert ((r.low > 0) or (r.high < 0)) == (p < a), (z0, accel, a, p, r.low, r.high)


def test_bca_endpoints_equal_the_core():
    rng = np.random.default_rng(3)
    y, x = rng.lognormal(0, 1, 80), rng.lognormal(0, 1, 80)
    res = stats.paired_bootstrap([stats.MeanDiff(y, x), stats.MeanDiff(y)], resamples=3000, seed=5,
                                 keep_distribution=True)
    for r in res:
        mine = interval_p(r.distribution, confidence=0.95, method="bca", z0=r.z0, accel=r.accel)
        assert mine.low == pytest.approx(r.bca_lo, rel=1e-12, abs=1e-14)
        assert mine.high == pytest.approx(r.bca_hi, rel=1e-12, abs=1e-14)
        pct = interval_p(r.distribution, confidence=0.95)
        assert (pct.low, pct.high) == pytest.approx((r.pct_lo, r.pct_hi), rel=1e-12, abs=1e-14)
        # the percentile p agrees with the core's count-based p up to the +1 correction
        assert pct.p == pytest.approx(r.p, abs=3 / 3000)


def test_choose_method():
    assert choose_method("mean", 100, 0.1, 0.02) == "bca"
    assert choose_method("mean", 20, 0.1, 0.02) == "percentile"        # small n
    assert choose_method("calibration", 1000, 0.0, 0.0) == "percentile"  # non-smooth statistic
    assert choose_method("mean", 100, 1.5, 0.0) == "percentile"          # the issue's ECE case: z0 far out
    assert choose_method("mean", 100, 0.1, 0.5) == "percentile"
    assert choose_method("mean", 100, math.nan, 0.0) == "percentile"


def test_the_issue_case_cannot_happen():
    """A BCa interval away from 0 with p = 0.92: the estimate at the top of its distribution
    (z0 large). The reported interval and p now come from one construction."""
    rng = np.random.default_rng(0)
    dist = rng.normal(0.0, 0.05, 10_000)
    est = float(np.quantile(dist, 0.985))     # z0 about 2.2
    z0 = stats.norm_ppf(float((dist < est).mean()))
    method = choose_method("mean", 20, z0, 0.0)
    r = interval_p(dist, confidence=0.95, method=method, z0=z0)
    assert method == "percentile" and r.low < 0 < r.high and r.p > 0.05
    assert agrees(r.low, r.high, r.p, 0.95)


def test_resolution_and_empty():
    r = interval_p(np.full(999, 0.3))
    assert r.p == pytest.approx(1 / 1000) and r.low == r.high == 0.3
    r = interval_p(np.array([np.nan, np.inf]))
    assert r.resamples == 0 and math.isnan(r.p)
    r = interval_p(np.array([1.0, 2.0, np.nan]), tested=False)
    assert math.isnan(r.p) and r.resamples == 2


def _check_rows(df, confidence):
    bad = []
    for r in df.iter_rows(named=True):
        if r["p"] is None or (isinstance(r["p"], float) and math.isnan(r["p"])):
            continue
        assert r["ci_low"] is not None and r["null"] is not None, r
        if not agrees(r["ci_low"], r["ci_high"], r["p"], confidence, r["null"]):
            bad.append((r.get("task"), r.get("group"), r["metric"], r["ci_low"], r["ci_high"], r["p"]))
    return bad


def test_every_row_of_an_analysis_agrees(tmp_path_factory):
    """Every tested row of the summary and the groups table of a real analysis (a tiny Llama,
    full precision vs bnb-nf4, three task kinds): interval excludes 0 <=> p < alpha."""
    pytest.importorskip("bitsandbytes")
    from qfair.analyze import compare
    from qfair.dump.run import dump
    from qfair.models.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("agree")
    model = make_tiny_model("llama", root / "tiny", seed=2)
    tasks = ["piqa", "arc_easy", "truthfulqa_mc2", "crows_pairs_english"]
    for q in ("none", "bnb-nf4"):
        dump(root / q, model=str(model), quant=q, tasks=tasks, limit=12, progress=False)
    for conf in (0.95, 0.9):
        cmp = compare(root / "none", root / "bnb-nf4", bootstrap=500, seed=4, confidence=conf, ttest=True)
        tested = cmp.summary.filter(cmp.summary["p"].is_not_null())
        assert tested.height > 100
        assert set(tested["kind"]) >= {"example", "calibration", "study", "uncertainty", "uncertainty_token"}
        assert _check_rows(cmp.summary, conf) == []
        assert _check_rows(cmp.groups, conf) == []
        # descriptive rows carry an interval and say they are not tests
        desc = cmp.summary.filter(cmp.summary["p"].is_null() & cmp.summary["ci_low"].is_not_null())
        assert desc.height and all(t.startswith("none") for t in desc["test"].to_list())
