"""Calibration error: hand-computed cases and Kumar et al.'s `calibration` package."""
from __future__ import annotations

import math

import numpy as np
import pytest

from qfair import stats
from qfair.calibration import bin_assign, calibration


def test_hand_computed_width_bins_with_edges_zero_and_one():
    # B = 5, edges 0.2 0.4 0.6 0.8 1.0, intervals (lo, hi], 0 in the first bin.
    conf = np.array([0.0, 0.2, 0.2, 0.4, 0.5, 1.0, 1.0, 0.8])
    corr = np.array([0, 1, 0, 1, 1, 1, 0, 1.0])
    r = calibration(conf, corr, bins=5)
    # bin 0: {0.0, 0.2, 0.2} acc 1/3 conf 0.4/3 -> gap 0.2; bin 1: {0.4} gap 0.6;
    # bin 2: {0.5} gap 0.5; bin 3: {0.8} gap 0.2; bin 4: {1.0, 1.0} acc 0.5 gap 0.5
    assert r.bins["n"].to_list() == [3, 1, 1, 1, 2]
    assert r.ece == pytest.approx((3 * 0.2 + 0.6 + 0.5 + 0.2 + 2 * 0.5) / 8, abs=1e-15)
    assert r.mce == pytest.approx(0.6, abs=1e-15)
    assert r.rms == pytest.approx(math.sqrt((3 * 0.04 + 0.36 + 0.25 + 0.04 + 2 * 0.25) / 8), abs=1e-15)
    # debiased: bins with n >= 2 only: bin 0: 0.04 - (1/3)(2/3)/2; bin 4: 0.25 - 0.25/1
    ce2 = 3 / 8 * (0.04 - (2 / 9) / 2) + 2 / 8 * 0.0
    assert r.ce2_debiased == pytest.approx(ce2, abs=1e-15)
    assert r.l2_debiased == 0.0
    np.testing.assert_allclose(r.bins["lo"].to_numpy(), [0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(r.bins["acc_mean"].to_numpy(), [1 / 3, 1, 1, 1, 0.5])


def test_correctness_not_label_index():
    # A pitfall seen in published code: every prediction right with confidence 1 is
    # perfectly calibrated whatever the gold label index is.
    conf = np.ones(6)
    r = calibration(conf, np.ones(6), bins=15)
    assert r.ece == 0.0 and r.mce == 0.0


def test_empty_bins_reported_and_skipped():
    r = calibration([0.85, 0.97], [1, 1], bins=10)  # bins (0.8, 0.9] and (0.9, 1]
    assert r.bins.height == 10
    assert r.bins["n"].to_list() == [0] * 8 + [1, 1]
    assert np.isnan(r.bins["conf_mean"][0])
    assert r.ece == pytest.approx((0.15 + 0.03) / 2)
    assert r.mce == pytest.approx(0.15)


def test_rejects_bad_confidences():
    with pytest.raises(ValueError):
        calibration([0.5, np.nan], [1, 0])
    with pytest.raises(ValueError):
        calibration([0.5, 1.5], [1, 0])


cal = pytest.importorskip("calibration.utils", reason="uncertainty-calibration not installed")


def _kumar(conf, corr, bins, scheme, p, debias):
    return cal.lower_bound_scaling_ce(conf, corr.astype(int), p=p, debias=debias, num_bins=bins,
                                      binning_scheme=scheme, mode="top-label")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("binning", ["width", "mass"])
def test_against_kumar_package(seed, binning):
    rng = np.random.default_rng(seed)
    n = [37, 200, 1000, 15][seed]
    conf = rng.uniform(0.0, 1.0, n) ** 0.5
    if seed == 1:  # many ties and values exactly on the width edges
        conf = rng.integers(0, 11, n) / 10.0
    corr = (rng.uniform(size=n) < conf * 0.9).astype(float)
    bins = 10
    scheme = cal.get_equal_prob_bins if binning == "width" else cal.get_equal_bins
    r = calibration(conf, corr, bins=bins, binning=binning)
    assert r.ece == pytest.approx(_kumar(conf, corr, bins, scheme, 1, False), abs=1e-12)
    assert r.rms == pytest.approx(_kumar(conf, corr, bins, scheme, 2, False), abs=1e-12)
    assert r.l2_debiased == pytest.approx(_kumar(conf, corr, bins, scheme, 2, True), abs=1e-12)
    # bin membership equals the package's
    edges = scheme(list(conf), num_bins=bins)
    ref_bins = np.searchsorted(edges, conf)
    got_bins, upper = bin_assign(conf, bins=bins, binning=binning)
    np.testing.assert_allclose(upper, edges)
    np.testing.assert_array_equal(got_bins, ref_bins)


@pytest.mark.parametrize("bins", [3, 8, 15])
def test_bootstrap_equal_mass_rebins_every_resample(bins):
    # Each resample's equal-mass ECE equals the package's on the expanded resample (bins taken
    # four at a time by the core, and the rest one by one: 3, 8 and 15 bins cover both).
    rng = np.random.default_rng(5)
    n, B, seed = 90, 40, 17
    conf = np.round(rng.uniform(0.3, 1.0, n), 2)  # ties
    corr = (rng.uniform(size=n) < conf).astype(float)
    for measure, p, debias in (("ece", 1, False), ("rms", 2, False), ("l2_debiased", 2, True)):
        res = stats.paired_bootstrap(
            [stats.CalibrationDiff(conf, corr, bins=bins, binning="mass", measure=measure)],
            resamples=B, seed=seed, keep_distribution=True)[0]
        for b in range(B):
            idx = np.repeat(np.arange(n), stats.bootstrap_counts(n, seed, b))
            ref = _kumar(conf[idx], corr[idx], bins, cal.get_equal_bins, p, debias)
            assert res.distribution[b] == pytest.approx(ref, abs=1e-12), (measure, b)
        assert res.estimate == pytest.approx(_kumar(conf, corr, bins, cal.get_equal_bins, p, debias))
