"""Calibration statistics of the same inputs under other measures share their per-bin
sums within a resample (the core's OrderedEval::share). Sharing must be invisible:
every statistic of a mixed call has exactly the distribution it has when bootstrapped
alone (where nothing is shared), whatever the order of the statistics and the threads."""
from __future__ import annotations

import numpy as np
import pytest

from qfair import stats

MEASURES = ("ece", "mce", "rms", "l2_debiased")


def _inputs(n, seed):
    rng = np.random.default_rng(seed)
    cx, cy = rng.random(n), rng.random(n)
    if n > 20:
        cx[:7] = 1.0                      # the top edge, and a tie run
        cy[3:12] = 0.0
    ax = (rng.random(n) < cx).astype(float)
    ay = (rng.random(n) < cy).astype(float)
    return cx, ax, cy, ay


def _specs(n, seed):
    cx, ax, cy, ay = _inputs(n, seed)
    cz, az, _, _ = _inputs(n, seed + 1)   # a third model: same n, other inputs (must not share)
    specs = [stats.MeanDiff(ay, ax)]
    for m in MEASURES:
        for bins in (15, 4):
            specs += [stats.CalibrationDiff(cy, ay, cx, ax, bins=bins, measure=m),
                      stats.CalibrationDiff(cx, ax, bins=bins, measure=m),
                      stats.CalibrationDiff(cy, ay, bins=bins, measure=m),
                      stats.CalibrationDiff(cz, az, cx, ax, bins=bins, measure=m),
                      stats.CalibrationDiff(cz, az, bins=bins, measure=m),
                      stats.CalibrationDiff(cy, ay, bins=bins, binning="mass", measure=m)]
    return specs


@pytest.mark.parametrize("n", [1, 3, 40, 1500])
@pytest.mark.parametrize("threads", [1, 3])
def test_each_statistic_as_if_alone(n, threads):
    specs = _specs(n, seed=n)
    rng = np.random.default_rng(7)
    for order in (np.arange(len(specs)), rng.permutation(len(specs)), np.arange(len(specs))[::-1]):
        chosen = [specs[i] for i in order]
        together = stats.paired_bootstrap(chosen, resamples=200, seed=3, threads=threads, keep_distribution=True)
        for spec, got in zip(chosen, together):
            alone = stats.paired_bootstrap([stats.MeanDiff(np.zeros(n)), spec], resamples=200, seed=3, threads=threads,
                                           keep_distribution=True)[1]
            np.testing.assert_array_equal(got.distribution, alone.distribution)
            assert (got.estimate, got.pct_lo, got.pct_hi) == (alone.estimate, alone.pct_lo, alone.pct_hi) or \
                np.isnan(got.estimate)


def test_shared_sides_agree_with_a_float64_reference():
    """One model's four width measures from one call against numpy on the resample's counts."""
    n, B = 300, 50
    cx, ax, _, _ = _inputs(n, 11)
    specs = [stats.CalibrationDiff(cx, ax, bins=10, measure=m) for m in MEASURES]
    res = stats.paired_bootstrap(specs, resamples=B, seed=9, threads=2, keep_distribution=True)
    b = np.minimum((cx * 10).astype(int), 9)
    for r in range(B):
        w = stats.bootstrap_counts(n, 9, r).astype(float)
        cnt = np.bincount(b, w, 10)
        gap = np.bincount(b, w * ax, 10) - np.bincount(b, w * cx, 10)
        acc = np.bincount(b, w * ax, 10)
        ok = cnt > 0
        ece = np.abs(gap[ok]).sum() / n
        mce = (np.abs(gap[ok]) / cnt[ok]).max()
        rms = np.sqrt((gap[ok] ** 2 / cnt[ok]).sum() / n)
        two = cnt >= 2
        a = acc[two] / cnt[two]
        l2 = np.sqrt(max(0.0, ((gap[two] ** 2 / cnt[two]) - cnt[two] * a * (1 - a) / (cnt[two] - 1)).sum() / n))
        for got, want in zip(res, (ece, mce, rms, l2)):
            assert got.distribution[r] == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("n", [1, 3, 17, 40, 1501])
@pytest.mark.parametrize("threads", [1, 2])
def test_means_evaluated_together_are_each_mean_alone(n, threads):
    """The means of a call are summed in one pass over each resample's counts (the kernels'
    dot_counts_multi, groups of two or four): each distribution is bit for bit the one the mean
    has as the only mean of a call (dot_counts), for every count of means (group remainders
    included) and lengths that end mid-chain; and each equals a float64 numpy mean of the
    resample within rounding."""
    rng = np.random.default_rng(n)
    cal = stats.CalibrationDiff(rng.random(n), (rng.random(n) < 0.5).astype(float), bins=5)  # forces counts
    means = [stats.MeanDiff(rng.normal(size=n) * 10.0 ** k, rng.normal(size=n) if k % 2 else None)
             for k in range(-3, 4)]
    for m in (2, 3, 5, 7):
        together = stats.paired_bootstrap([cal, *means[:m]], resamples=120, seed=5, threads=threads,
                                          keep_distribution=True)
        for spec, got in zip(means[:m], together[1:]):
            alone = stats.paired_bootstrap([cal, spec], resamples=120, seed=5, threads=threads,
                                           keep_distribution=True)[1]
            np.testing.assert_array_equal(got.distribution, alone.distribution)
    counts = stats.bootstrap_count_rows(n, 5, 0, 120, np.uint32).astype(np.float64)
    for spec, got in zip(means, together[1:]):
        d = spec.y - (spec.x if spec.x is not None else 0.0)
        np.testing.assert_allclose(got.distribution, counts @ d / n, rtol=1e-12, atol=1e-12 * np.abs(d).max())
