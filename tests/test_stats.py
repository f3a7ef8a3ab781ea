"""The C++ statistics against their oracles (docs/metrics.md): scipy, statsmodels."""
from __future__ import annotations

import math

import numpy as np
import pytest

scipy_stats = pytest.importorskip("scipy.stats")
import rng_streams  # noqa: E402
from scipy.special import ndtri  # noqa: E402
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar  # noqa: E402
from statsmodels.stats.multitest import multipletests  # noqa: E402
from statsmodels.stats.proportion import proportion_confint  # noqa: E402

from qfair import stats  # noqa: E402


# --------------------------------------------------------------- normal quantile
def test_norm_ppf_matches_ndtri():
    ps = np.concatenate([np.logspace(-300, -1, 60), np.linspace(0.01, 0.99, 99),
                         1 - np.logspace(-15, -1, 30), [0.5]])
    got = np.array([stats.norm_ppf(p) for p in ps])
    np.testing.assert_allclose(got, ndtri(ps), rtol=1e-13, atol=1e-14)
    assert stats.norm_ppf(0.0) == -math.inf and stats.norm_ppf(1.0) == math.inf


# ---------------------------------------------------------------------- McNemar
@pytest.mark.parametrize("b,c", [(0, 0), (0, 1), (1, 0), (3, 10), (10, 3), (7, 7), (0, 25),
                                 (12, 13), (150, 190), (4000, 4210), (1, 60)])
def test_mcnemar_against_binomtest(b, c):
    r = stats.mcnemar(b, c)
    n, k = b + c, min(b, c)
    if n == 0:
        assert r.p_exact == 1.0 and r.p_mid == 1.0
        return
    oracle = scipy_stats.binomtest(k, n, 0.5, alternative="two-sided").pvalue
    np.testing.assert_allclose(r.p_exact, oracle, rtol=1e-9)
    sm = sm_mcnemar(np.array([[5, b], [c, 9]]), exact=True).pvalue
    np.testing.assert_allclose(r.p_exact, sm, rtol=1e-9)
    mid = min(1.0, 2 * scipy_stats.binom.cdf(k, n, 0.5) - scipy_stats.binom.pmf(k, n, 0.5))
    np.testing.assert_allclose(r.p_mid, mid, rtol=1e-9, atol=1e-300)
    assert r.p_mid <= r.p_exact


# ----------------------------------------------------------------------- Wilson
def test_wilson_against_statsmodels():
    rng = np.random.default_rng(1)
    n = np.concatenate([[1, 1, 2, 10, 10, 37, 1000, 1000], rng.integers(1, 5000, 40)])
    k = np.concatenate([[0, 1, 1, 0, 10, 5, 3, 999], [rng.integers(0, m + 1) for m in n[8:]]])
    for conf in (0.95, 0.9, 0.99):
        lo, hi = stats.wilson(k, n, conf)
        olo, ohi = proportion_confint(k, n, alpha=1 - conf, method="wilson")
        np.testing.assert_allclose(lo, olo, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(hi, ohi, rtol=1e-12, atol=1e-15)
    lo, hi = stats.wilson([0], [0])
    assert lo[0] == 0.0 and hi[0] == 1.0


# ------------------------------------------------------------------- Holm / BH
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_holm_bh_against_statsmodels(seed):
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 0.1, 20) ** 2, rng.uniform(0, 1, 20), [0.0, 1.0, 0.03, 0.03, 0.03]])
    rng.shuffle(p)
    for method, sm in (("holm", "holm"), ("bh", "fdr_bh")):
        got = stats.adjust_pvalues(p, method)
        ref = multipletests(p, method=sm)[1]
        np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-15)


def test_adjust_ignores_nan():
    p = np.array([0.01, np.nan, 0.04, 0.03])
    got = stats.holm(p)
    assert np.isnan(got[1])
    finite = p[~np.isnan(p)]
    np.testing.assert_allclose(got[~np.isnan(p)], multipletests(finite, method="holm")[1])
    got = stats.benjamini_hochberg(p)
    np.testing.assert_allclose(got[~np.isnan(p)], multipletests(finite, method="fdr_bh")[1])
    with pytest.raises(ValueError):
        stats.adjust_pvalues(p, "holm-sidak")


# ------------------------------------------------------------------- bootstrap
def _paired_data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.uniform(size=n) < 0.6).astype(float)
    flip = rng.uniform(size=n) < 0.15
    y = np.where(flip, 1 - x, x)
    u = rng.gamma(2.0, 1.0, n)
    v = u + rng.normal(0.2, 0.7, n) + 0.3 * u**1.5  # skewed difference
    return x, y, u, v


def _ece_ref(conf, correct, bins):
    # independent numpy reference: edges k/B, (lo, hi], 0 in the first bin
    edges = np.arange(1, bins + 1) / bins
    b = np.minimum(np.searchsorted(edges, conf, side="left"), bins - 1)
    tot = 0.0
    for k in range(bins):
        m = b == k
        if m.any():
            tot += m.sum() * abs(correct[m].mean() - conf[m].mean())
    return tot / conf.size


def test_bootstrap_distribution_is_the_shared_draw():
    n, B, seed = 157, 300, 42
    x, y, u, v = _paired_data(n, 3)
    rng = np.random.default_rng(7)
    cx, cy = rng.uniform(0.2, 1, n), rng.uniform(0.2, 1, n)
    res = stats.paired_bootstrap(
        [stats.MeanDiff(y, x), stats.MeanDiff(v),
         stats.CalibrationDiff(cy, y, cx, x, bins=10)],
        resamples=B, seed=seed, keep_distribution=True)
    for b in range(B):
        idx = np.repeat(np.arange(n), stats.bootstrap_counts(n, seed, b))
        assert idx.size == n
        assert res[0].distribution[b] == pytest.approx(y[idx].mean() - x[idx].mean(), abs=1e-12)
        assert res[1].distribution[b] == pytest.approx(v[idx].mean(), abs=1e-12)
        ref = _ece_ref(cy[idx], y[idx], 10) - _ece_ref(cx[idx], x[idx], 10)
        assert res[2].distribution[b] == pytest.approx(ref, abs=1e-12)
    # the estimate, p-value and percentile interval follow from that distribution
    for r, est in ((res[0], y.mean() - x.mean()), (res[1], v.mean())):
        t = r.distribution
        assert r.estimate == pytest.approx(est, abs=1e-12)
        assert r.pct_lo == pytest.approx(np.percentile(t, 2.5), abs=1e-12)
        assert r.pct_hi == pytest.approx(np.percentile(t, 97.5), abs=1e-12)
        p = min(1.0, 2 * min((t <= 0).sum() + 1, (t >= 0).sum() + 1) / (B + 1))
        assert r.p == pytest.approx(p)
        assert r.se == pytest.approx(t.std(ddof=1))


def test_bootstrap_counts_are_uniform():
    n, B = 50, 4000
    tot = np.zeros(n)
    for b in range(B):
        c = stats.bootstrap_counts(n, 9, b)
        assert c.sum() == n
        tot += c
    # each index expected B times; chi-square goodness of fit
    chi2 = ((tot - B) ** 2 / B).sum()
    assert scipy_stats.chi2.sf(chi2, n - 1) > 1e-4


def test_bootstrap_same_seed_any_thread_count():
    x, y, u, v = _paired_data(1000, 5)
    rng = np.random.default_rng(0)
    cx, cy = rng.uniform(0, 1, 1000), rng.uniform(0, 1, 1000)
    # resamples are handed to the threads in chunks as they free up, so which
    # thread runs which resample varies; the shared per-resample bin sums of
    # the width measures must still be each resample's own
    sts = [stats.MeanDiff(y, x), stats.CalibrationDiff(cy, y, cx, x, binning="mass", bins=7),
           stats.CalibrationDiff(cy, y, cx, x, bins=10), stats.CalibrationDiff(cy, y, bins=10, measure="rms"),
           stats.CalibrationDiff(cy, y, bins=10)]
    outs = [stats.paired_bootstrap(sts, resamples=999, seed=11, threads=t, keep_distribution=True)
            for t in (1, 2, 5, 16)]
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            np.testing.assert_array_equal(a.distribution, b.distribution)
            assert (a.bca_lo, a.bca_hi, a.p) == (b.bca_lo, b.bca_hi, b.p)
    other = stats.paired_bootstrap(sts, resamples=999, seed=12, keep_distribution=True)
    assert not np.array_equal(other[0].distribution, outs[0][0].distribution)


@pytest.mark.parametrize("measure", ["ece", "mce", "rms", "l2_debiased"])
def test_bootstrap_paired_width_calibration_is_the_resample_measure(measure):
    # The paired width path sums per (y bin, x bin) segment; every resample
    # must equal the plain calibration measure of the expanded resample.
    from qfair._native import core

    rng = np.random.default_rng(22)
    n, B, seed = 203, 25, 8
    cx, cy = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    x, y = (rng.uniform(size=n) < cx).astype(float), (rng.uniform(size=n) < cy).astype(float)
    res = stats.paired_bootstrap([stats.CalibrationDiff(cy, y, cx, x, bins=10, measure=measure)],
                                 resamples=B, seed=seed, keep_distribution=True)[0]
    for b in range(B):
        idx = np.repeat(np.arange(n), stats.bootstrap_counts(n, seed, b))
        ref = core.calibration(cy[idx], y[idx], 10)[measure] - core.calibration(cx[idx], x[idx], 10)[measure]
        assert res.distribution[b] == pytest.approx(ref, abs=1e-12), b


def test_bootstrap_above_2_16_examples_uses_wide_multiplicities():
    # n >= 2^16: 32-bit multiplicities and positions (below, 16-bit ones).
    from qfair._native import core

    rng = np.random.default_rng(23)
    n, B, seed = 70_001, 3, 4
    cx, cy = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    x, y = (rng.uniform(size=n) < cx).astype(float), (rng.uniform(size=n) < cy).astype(float)
    try:
        for isa in core.available_isas():
            core.select_isa(isa)
            res = stats.paired_bootstrap([stats.MeanDiff(y, x), stats.CalibrationDiff(cy, y, cx, x, bins=10)],
                                         resamples=B, seed=seed, keep_distribution=True)
            for b in range(B):
                idx = np.repeat(np.arange(n), stats.bootstrap_counts(n, seed, b))
                assert res[0].distribution[b] == pytest.approx(y[idx].mean() - x[idx].mean(), abs=1e-12)
                ref = _ece_ref(cy[idx], y[idx], 10) - _ece_ref(cx[idx], x[idx], 10)
                assert res[1].distribution[b] == pytest.approx(ref, abs=1e-12)
    finally:
        core.select_isa("avx512")


def test_bootstrap_same_bits_on_every_instruction_set():
    # The resample sums run in the vector kernels (four chains, no FMA): every
    # instruction set, and every thread count, gives the same distribution.
    from qfair._native import core

    rng = np.random.default_rng(21)
    n = 1001  # not a multiple of the vector width
    cx, cy = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    x, y = rng.normal(0.3, 1.0, n), rng.normal(0.2, 1.0, n)  # not 0/1: rounding shows
    sts = [stats.MeanDiff(y, x),
           stats.CalibrationDiff(cy, y > 0, cx, x > 0, bins=10),                 # ECE, pair segments
           stats.CalibrationDiff(cy, y > 0, cx, x > 0, bins=10, measure="rms"),  # full sums
           stats.CalibrationDiff(cy, y > 0, bins=10),                             # one side
           stats.CalibrationDiff(cy, y > 0, cx, x > 0, bins=6, binning="mass")]
    outs = []
    try:
        for isa in core.available_isas():
            assert core.select_isa(isa) == isa
            for t in (1, 3):
                outs.append(stats.paired_bootstrap(sts, resamples=300, seed=5, threads=t, keep_distribution=True))
    finally:
        core.select_isa("avx512")
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            np.testing.assert_array_equal(a.distribution, b.distribution)


@pytest.mark.parametrize("n, big", [
    (1001, 1),              # an accuracy difference: -1, 0, 1
    (513, 32767),           # the largest 16-bit term
    (32767, 65536),         # n * max|d| = 2^31 - 2^16: still 32-bit
    (32767, 65537),         # just over 2^31: the double path
    (32768, 1),             # a multiplicity could reach 2^15: the double path
    (3000, 32768),          # a term past 16 bits: the double path
])
def test_bootstrap_integer_differences_are_exact(n, big):
    # Integer differences are summed in 16-bit integers where that is exact;
    # either way the mean of a resample is an exact integer sum over n, the
    # same double numpy gets from the counts (all its products and partial
    # sums are exact integers), on every instruction set.
    from qfair._native import core

    rng = np.random.default_rng(big + n)
    d = rng.integers(-big, big + 1, n).astype(np.float64)
    d[rng.integers(0, n)] = big  # the bound itself
    conf = rng.uniform(0, 1, n)
    B, seed = 40, 3
    ref = np.array([(stats.bootstrap_counts(n, seed, b).astype(np.float64) * d).sum() / n for b in range(B)])
    try:
        for isa in core.available_isas():
            core.select_isa(isa)
            # alone: summed over the drawn indices; one beside a calibration
            # measure: a dot with the multiplicities (the 16-bit path); two:
            # the dots of several means at once
            cal = stats.CalibrationDiff(conf, conf > 0.5, bins=5)
            for sts in ([stats.MeanDiff(d)], [stats.MeanDiff(d + 0.5, np.full(n, 0.5)), cal],
                        [cal, stats.MeanDiff(d), stats.MeanDiff(d + 0.5, np.full(n, 0.5))]):
                r = stats.paired_bootstrap(sts, resamples=B, seed=seed, keep_distribution=True)
                means = [o for o, st in zip(r, sts) if isinstance(st, stats.MeanDiff)]
                for o in means:
                    np.testing.assert_array_equal(o.distribution, ref)
    finally:
        core.select_isa("avx512")


@pytest.mark.parametrize("method", ["percentile", "BCa"])
def test_bootstrap_ci_against_scipy(method):
    n, B = 400, 20000
    x, y, u, v = _paired_data(n, 1)
    ours = stats.paired_bootstrap([stats.MeanDiff(y, x), stats.MeanDiff(v, u)], resamples=B, seed=3)
    for r, (a, b) in zip(ours, ((x, y), (u, v))):
        ref = scipy_stats.bootstrap(
            (a, b), lambda a, b, axis: np.mean(b - a, axis=axis), paired=True, vectorized=True,
            n_resamples=B, method=method, confidence_level=0.95, rng=np.random.default_rng(0))
        lo, hi = (r.pct_lo, r.pct_hi) if method == "percentile" else (r.bca_lo, r.bca_hi)
        # Monte-Carlo error of a tail quantile with B = 20000 is ~0.03 standard errors
        tol = 0.15 * r.se
        assert abs(lo - ref.confidence_interval.low) < tol
        assert abs(hi - ref.confidence_interval.high) < tol
        assert r.se == pytest.approx(ref.standard_error, rel=0.05)


def test_bootstrap_ece_bca_against_scipy():
    n, B = 200, 3000
    rng = np.random.default_rng(4)
    cx = rng.uniform(0.3, 1, n)
    x = (rng.uniform(size=n) < cx * 0.8).astype(float)
    cy = np.clip(cx + rng.normal(0.05, 0.1, n), 0, 1)
    y = np.where(rng.uniform(size=n) < 0.1, 1 - x, x)
    ours = stats.paired_bootstrap([stats.CalibrationDiff(cy, y, cx, x, bins=10)], resamples=B, seed=1)[0]

    def stat(cx, x, cy, y):
        return _ece_ref(cy, y, 10) - _ece_ref(cx, x, 10)

    ref = scipy_stats.bootstrap((cx, x, cy, y), stat, paired=True, vectorized=False, n_resamples=B,
                                method="BCa", rng=np.random.default_rng(1))
    assert ours.estimate == pytest.approx(stat(cx, x, cy, y), abs=1e-12)
    tol = 0.3 * ours.se
    assert abs(ours.bca_lo - ref.confidence_interval.low) < tol
    assert abs(ours.bca_hi - ref.confidence_interval.high) < tol


def test_bootstrap_jackknife_acceleration_matches_definition():
    # BCa acceleration from leave-one-out values: check both the analytic (mean)
    # and the O(n*bins) calibration shortcut against direct recomputation.
    n = 60
    rng = np.random.default_rng(8)
    conf = rng.uniform(0, 1, n)
    corr = (rng.uniform(size=n) < conf).astype(float)
    d = rng.normal(size=n) ** 3
    for st, f in ((stats.MeanDiff(d), lambda m: d[m].mean()),
                  (stats.CalibrationDiff(conf, corr, bins=6), lambda m: _ece_ref(conf[m], corr[m], 6))):
        r = stats.paired_bootstrap([st], resamples=50, seed=0)[0]
        jack = np.array([f(np.arange(n) != i) for i in range(n)])
        u = jack.mean() - jack
        a = (u**3).sum() / (6 * ((u**2).sum()) ** 1.5)
        assert r.accel == pytest.approx(a, rel=1e-9, abs=1e-15)


def test_bootstrap_degenerate_and_bad_input():
    z = np.zeros(30)
    r = stats.paired_bootstrap([stats.MeanDiff(z, z)], resamples=200)[0]
    assert r.estimate == 0 and r.pct_lo == 0 and r.pct_hi == 0 and r.p == 1.0
    with pytest.raises(ValueError):
        stats.paired_bootstrap([stats.MeanDiff(np.array([1.0, np.nan]))])
    with pytest.raises(ValueError):
        stats.paired_bootstrap([stats.MeanDiff(np.ones(3), np.ones(4))])
    r = stats.paired_bootstrap([stats.MeanDiff(np.ones(50))], resamples=100)[0]
    assert r.p == pytest.approx(2 / 101)
    r = stats.paired_bootstrap([stats.MeanDiff(np.array([0.7]))], resamples=100)[0]
    assert r.estimate == 0.7 and r.pct_lo == 0.7 and math.isnan(r.p) and math.isnan(r.bca_lo)


# ------------------------------------------------------------ permutation test
@pytest.mark.parametrize("kind", ["continuous", "ties"])
def test_sign_flip_exact_against_scipy(kind):
    rng = np.random.default_rng(2)
    n = 11
    if kind == "continuous":
        x, y = rng.normal(0.5, 1, n), rng.normal(0, 1, n)
    else:
        x, y = rng.integers(0, 2, n).astype(float), rng.integers(0, 2, n).astype(float)
    ref = scipy_stats.permutation_test((x, y), lambda a, b, axis: np.mean(a - b, axis=axis),
                                       permutation_type="samples", n_resamples=10**5,
                                       vectorized=True)
    ours = stats.sign_flip_test(x - y, resamples=10**5)
    assert ours.exact and ours.resamples == 2**n
    assert ours.statistic == pytest.approx(ref.statistic)
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-12)


def _sign_flip_reference_p(d, resamples: int, seed: int) -> float:
    """The random sign-flip p by its definition, in Python floats: resample m flips term j where
    bit j mod 64 of word j // 64 of stream (seed ^ "permutat", m) is set, sums four chains
    (j mod 4) combined as (s0 + s1) + (s2 + s3), and counts means within the tolerance."""
    d = [float(v) for v in d]
    n = len(d)
    total = sabs = 0.0
    for v in d:
        total += v
        sabs += abs(v)
    obs = total / n
    eps = np.finfo(np.float64).eps
    gamma = max(100.0 * eps * abs(obs), 16.0 * eps * sabs)
    le = ge = 0
    for m in range(resamples):
        g = rng_streams.Stream(seed ^ 0x7065726D75746174, m)  # "permutat"
        words = [g.next() for _ in range((n + 63) // 64)]
        acc = [0.0, 0.0, 0.0, 0.0]
        for j, v in enumerate(d):
            acc[j & 3] += -v if (words[j // 64] >> (j % 64)) & 1 else v
        mean = ((acc[0] + acc[1]) + (acc[2] + acc[3])) / n
        le += mean <= obs + gamma
        ge += mean >= obs - gamma
    return min(1.0, 2.0 * min((le + 1) / (resamples + 1), (ge + 1) / (resamples + 1)))


@pytest.mark.parametrize("n,resamples,kind", [(150, 53, "continuous"), (150, 53, "integers"), (3, 5, "integers"),
                                              (64, 16, "continuous"), (257, 9, "integers")])
def test_sign_flip_random_signs_are_the_defined_stream(n, resamples, kind):
    """The core flips blocks of resamples at once in vector lanes; each resample's signs and
    sum must still be the defined ones (integer data: sums exact, many means tie the observed
    one), for partial blocks, words and chains, at any thread count."""
    rng = np.random.default_rng(n + resamples)
    d = rng.normal(0.1, 1, n) if kind == "continuous" else rng.integers(-1, 3, n).astype(float)
    want = _sign_flip_reference_p(d, resamples, seed=11)
    for t in (1, 3):
        r = stats.sign_flip_test(d, resamples=resamples, seed=11, threads=t)
        assert not r.exact and r.resamples == resamples
        assert r.p == want


def test_sign_flip_monte_carlo_against_scipy():
    rng = np.random.default_rng(3)
    n, B = 80, 20000
    x = rng.normal(0.25, 1, n)
    y = rng.normal(0, 1, n)
    ref = scipy_stats.permutation_test((x, y), lambda a, b, axis: np.mean(a - b, axis=axis),
                                       permutation_type="samples", n_resamples=B, vectorized=True,
                                       rng=np.random.default_rng(0))
    ours = stats.sign_flip_test(x - y, resamples=B, seed=5)
    assert not ours.exact
    se = math.sqrt(ref.pvalue * (1 - ref.pvalue) / B) + 1 / B
    assert abs(ours.p - ref.pvalue) < 6 * math.sqrt(2) * se
    a = stats.sign_flip_test(x - y, resamples=3000, seed=5, threads=1)
    b = stats.sign_flip_test(x - y, resamples=3000, seed=5, threads=3)
    assert a == b
    assert stats.sign_flip_test(np.zeros(100)).p == 1.0


def test_bootstrap_bca_on_skewed_data_against_scipy():
    # Strong skew: BCa moves well away from the percentile interval, so agreement
    # with scipy here checks z0 and the acceleration, not just the quantiles.
    rng = np.random.default_rng(12)
    n, B = 40, 40000
    a = np.zeros(n)
    b = np.exp(rng.normal(0, 1.3, n))
    r = stats.paired_bootstrap([stats.MeanDiff(b, a)], resamples=B, seed=2)[0]
    ref = scipy_stats.bootstrap((a, b), lambda a, b, axis: np.mean(b - a, axis=axis), paired=True,
                                vectorized=True, n_resamples=B, method="BCa",
                                rng=np.random.default_rng(0))
    tol = 0.06 * r.se
    assert abs(r.bca_hi - r.pct_hi) > 4 * tol  # the test can tell BCa from percentile
    assert abs(r.bca_lo - ref.confidence_interval.low) < tol
    assert abs(r.bca_hi - ref.confidence_interval.high) < tol
