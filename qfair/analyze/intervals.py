"""One interval and one p-value per summary row, from the same construction.

A row of the summary reports a bootstrap interval (``ci_low``, ``ci_high``,
``ci_method``) and a p-value (``p``). Both come from the same bootstrap
distribution and the same interval construction: ``p`` is the smallest
``alpha`` at which that interval, built at level ``1 - alpha``, excludes the
null value. Hence, for every row and every level, "the interval excludes the
null" holds exactly when "p < alpha" (up to the resolution ``1/(B+1)``).

Interval constructions (``method``):

- ``percentile``: the ``alpha/2`` and ``1 - alpha/2`` quantiles of the
  bootstrap distribution (linear interpolation between order statistics, as
  numpy and the C++ core);
- ``bca``: the bias-corrected and accelerated levels of Efron & Tibshirani
  (z0 and the jackknife acceleration from the C++ core), the same quantile
  function. It is used only where it is stable (:func:`choose_method`).

The inversion is analytic. With Q the quantile function of the sorted
replicates (continuous and non-decreasing in its level t), let
L = sup{t : Q(t) <= null} and H = inf{t : Q(t) >= null}. The lower end
exceeds the null iff the lower level a1(alpha) > L, the upper end is below it
iff a2(alpha) < H; solving a1(alpha) = L and a2(alpha) = H for alpha gives the
two one-sided levels, and p = min(1, both). For the percentile method
a1(alpha) = alpha/2, so p = min(1, 2 min(L, 1 - H)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["IntervalP", "interval_p", "choose_method", "quantile_sorted", "norm_cdf", "BCA_MIN_N",
           "BCA_MAX_Z0", "BCA_MAX_ACCEL", "agrees"]

# BCa is used for a mean-type row only with at least this many examples and a
# moderate bias correction and acceleration; otherwise its corrections are
# themselves too noisy (and for non-smooth statistics such as ECE it can move
# the interval off the estimate entirely).
BCA_MIN_N = 30
BCA_MAX_Z0 = 1.0
BCA_MAX_ACCEL = 0.2


def norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _norm_ppf(p: float) -> float:
    from qfair.stats import norm_ppf

    return norm_ppf(p)


def quantile_sorted(s: np.ndarray, q: float) -> float:
    """Linear interpolation between order statistics at rank q (B - 1) (numpy's default)."""
    b = s.size
    q = min(1.0, max(0.0, q))
    h = (b - 1) * q
    lo = int(math.floor(h))
    if lo >= b - 1:
        return float(s[b - 1])
    return float(s[lo] + (h - lo) * (s[lo + 1] - s[lo]))


def _level_le(s: np.ndarray) -> float:
    """sup{t : Q(t) <= 0} for sorted replicates s."""
    b = s.size
    if s[0] > 0:
        return 0.0
    if s[-1] <= 0:
        return 1.0
    k = int(np.searchsorted(s, 0.0, side="right"))  # s[k-1] <= 0 < s[k]
    h = (k - 1) + (0.0 - s[k - 1]) / (s[k] - s[k - 1])
    return h / (b - 1)


def _level_ge(s: np.ndarray) -> float:
    """inf{t : Q(t) >= 0} for sorted replicates s (1 when Q < 0 everywhere)."""
    b = s.size
    if s[0] >= 0:
        return 0.0
    if s[-1] < 0:
        return 1.0
    m = int(np.searchsorted(s, 0.0, side="left"))  # s[m-1] < 0 <= s[m]
    h = (m - 1) + (0.0 - s[m - 1]) / (s[m] - s[m - 1])
    return h / (b - 1)


def bca_levels(alpha: float, z0: float, accel: float) -> tuple[float, float]:
    """The percentile levels of the BCa interval at level 1 - alpha (as the C++ core)."""
    za = _norm_ppf(alpha / 2.0)
    n1, n2 = z0 + za, z0 - za
    return (norm_cdf(z0 + n1 / (1.0 - accel * n1)), norm_cdf(z0 + n2 / (1.0 - accel * n2)))


def _alpha_lower(level: float, z0: float, a: float) -> float:
    """Smallest alpha whose lower level exceeds ``level`` (0: always, 1: never)."""
    if level <= 0.0:
        return 0.0
    if level >= 1.0:
        return 1.0
    w = _norm_ppf(level) - z0
    if w >= z0 / (1.0 - a * z0):          # above the largest lower level (alpha -> 1)
        return 1.0
    if a > 0 and w <= -1.0 / a:           # below the smallest lower level (alpha -> 0)
        return 0.0
    u = w / (1.0 + a * w)
    return min(1.0, 2.0 * norm_cdf(u - z0))


def _alpha_upper(level: float, z0: float, a: float) -> float:
    """Smallest alpha whose upper level falls below ``level`` (0: always, 1: never)."""
    if level >= 1.0:
        return 0.0
    if level <= 0.0:
        return 1.0
    w = _norm_ppf(level) - z0
    if w <= z0 / (1.0 - a * z0):
        return 1.0
    if a < 0 and w >= -1.0 / a:
        return 0.0
    u = w / (1.0 + a * w)
    return min(1.0, 2.0 * norm_cdf(z0 - u))


@dataclass(frozen=True)
class IntervalP:
    low: float
    high: float
    p: float
    method: str          # "percentile" or "bca"
    resamples: int       # finite replicates used


def choose_method(kind: str, n: int, z0: float, accel: float) -> str:
    """``bca`` for smooth (mean-type) statistics with enough examples and moderate
    corrections, ``percentile`` otherwise (calibration errors, correlations,
    ratios, small n)."""
    if kind != "mean" or n < BCA_MIN_N:
        return "percentile"
    if not (math.isfinite(z0) and math.isfinite(accel)):
        return "percentile"
    if abs(z0) > BCA_MAX_Z0 or abs(accel) > BCA_MAX_ACCEL:
        return "percentile"
    return "bca"


def interval_p(dist: np.ndarray, *, confidence: float = 0.95, method: str = "percentile", z0: float = 0.0,
               accel: float = 0.0, null: float = 0.0, tested: bool = True) -> IntervalP:
    """Interval and p-value from bootstrap replicates (non-finite replicates dropped).

    ``tested=False`` gives the interval only (p NaN): descriptive rows.
    """
    s = np.sort(np.asarray(dist, dtype=np.float64))
    s = s[np.isfinite(s)]
    if s.size == 0:
        return IntervalP(math.nan, math.nan, math.nan, method, 0)
    alpha = 1.0 - float(confidence)
    if method == "bca":
        a1, a2 = bca_levels(alpha, z0, accel)
        zz, aa = z0, accel
    elif method == "percentile":
        a1, a2 = alpha / 2.0, 1.0 - alpha / 2.0
        zz, aa = 0.0, 0.0
    else:
        raise ValueError(f"method: expected 'percentile' or 'bca', got {method!r}")
    lo, hi = quantile_sorted(s, a1), quantile_sorted(s, a2)
    if not tested:
        return IntervalP(lo, hi, math.nan, method, int(s.size))
    c = s - null
    p = min(1.0, _alpha_lower(_level_le(c), zz, aa), _alpha_upper(_level_ge(c), zz, aa))
    p = max(p, 1.0 / (s.size + 1))  # the resolution of B replicates
    # floating-point knife edges: the reported interval decides
    excludes = lo > null or hi < null
    if excludes and not p < alpha:
        p = math.nextafter(alpha, 0.0)
    elif not excludes and p < alpha:
        p = alpha
    return IntervalP(lo, hi, p, method, int(s.size))


def agrees(low: float, high: float, p: float, confidence: float, null: float = 0.0) -> bool:
    """True when "the interval excludes ``null``" and "p < 1 - confidence" say the same."""
    return (low > null or high < null) == (p < 1.0 - confidence)
