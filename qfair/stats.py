"""Significance statistics: thin typed wrappers over the C++ core (``qfair._core``).

Every function here converts its inputs to the layout the core expects
(contiguous float64 / int64), calls it, and wraps the answer in a small
dataclass. Definitions and conventions: docs/metrics.md and docs/analyze.md.

- :func:`paired_bootstrap` -- several statistics over one shared index draw per
  resample (percentile and BCa intervals, two-sided p). Same seed, same numbers,
  at any thread count.
- :func:`mcnemar` -- exact and mid-p McNemar test on the flip table.
- :func:`sign_flip_test` -- paired sign-flip permutation test of a mean difference.
- :func:`wilson` -- Wilson score intervals for proportions.
- :func:`adjust_pvalues` -- Holm or Benjamini-Hochberg over a family of tests.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from qfair._native import core
from qfair.threads import resolve_threads

Binning = Literal["width", "mass"]
CalMeasure = Literal["ece", "mce", "rms", "l2_debiased"]
AdjustMethod = Literal["holm", "bh"]

__all__ = [
    "BootstrapResult",
    "McNemarResult",
    "PermutationResult",
    "MeanDiff",
    "CalibrationDiff",
    "paired_bootstrap",
    "bootstrap_counts",
    "bootstrap_count_rows",
    "cell_sums",
    "weighted_dots",
    "mcnemar",
    "sign_flip_test",
    "wilson",
    "adjust_pvalues",
    "holm",
    "benjamini_hochberg",
    "norm_ppf",
]


def _f64(a: Any, name: str) -> np.ndarray:
    arr = np.ascontiguousarray(a, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class MeanDiff:
    """mean(y) - mean(x) over paired examples (x=None: mean(y))."""

    y: Any
    x: Any | None = None

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "mean",
            "y": _f64(self.y, "y"),
            "x": None if self.x is None else _f64(self.x, "x"),
        }


@dataclass(frozen=True)
class CalibrationDiff:
    """CE(y) - CE(x) of a calibration measure, re-binned on every resample
    (x omitted: CE(y) alone)."""

    conf_y: Any
    correct_y: Any
    conf_x: Any | None = None
    correct_x: Any | None = None
    bins: int = 15
    binning: Binning = "width"
    measure: CalMeasure = "ece"

    def spec(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": "calibration",
            "conf_y": _f64(self.conf_y, "conf_y"),
            "correct_y": _f64(self.correct_y, "correct_y"),
            "bins": int(self.bins),
            "binning": self.binning,
            "measure": self.measure,
        }
        if self.conf_x is not None:
            d["conf_x"] = _f64(self.conf_x, "conf_x")
            d["correct_x"] = _f64(self.correct_x, "correct_x")
        return d


@dataclass(frozen=True)
class BootstrapResult:
    estimate: float
    se: float
    bias: float
    pct_lo: float
    pct_hi: float
    bca_lo: float
    bca_hi: float
    z0: float
    accel: float
    p: float
    distribution: np.ndarray | None = None


def paired_bootstrap(
    statistics: Sequence[MeanDiff | CalibrationDiff],
    *,
    resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
    threads: int | None = None,
    keep_distribution: bool = False,
) -> list[BootstrapResult]:
    """Bootstrap every statistic over the same resampled example indices.

    Resample ``b`` draws its indices from a counter-based stream keyed by
    ``(seed, b)``, so the output is identical for any ``threads``.
    """
    if not statistics:
        return []
    specs = [s.spec() for s in statistics]
    out = core.paired_bootstrap(
        specs,
        resamples=int(resamples),
        seed=int(seed) & 0xFFFFFFFFFFFFFFFF,
        confidence=float(confidence),
        threads=int(threads) if threads else resolve_threads(None),
        keep_distribution=bool(keep_distribution),
    )
    return [BootstrapResult(**r) for r in out]


def bootstrap_counts(n: int, seed: int, b: int) -> np.ndarray:
    """Multiplicities of resample ``b`` -- the draw :func:`paired_bootstrap` uses."""
    return core.bootstrap_counts(int(n), int(seed) & 0xFFFFFFFFFFFFFFFF, int(b))


def bootstrap_count_rows(n: int, seed: int, b0: int, b1: int, dtype: Any = np.uint32,
                         threads: int | None = None) -> np.ndarray:
    """``[b1 - b0, n]``: row ``i`` is :func:`bootstrap_counts` ``(n, seed, b0 + i)``, as uint16 or
    uint32 (``dtype``). OverflowError when a uint16 row would not hold a multiplicity (n >= 2**16)."""
    name = np.dtype(dtype).name
    if name not in ("uint16", "uint32"):
        raise ValueError(f"dtype: expected uint16 or uint32, got {name}")
    return core.bootstrap_count_rows(int(n), int(seed) & 0xFFFFFFFFFFFFFFFF, int(b0), max(0, int(b1) - int(b0)),
                                     name, resolve_threads(threads))


def cell_sums(counts: np.ndarray, cells: np.ndarray, n_cells: int, values: np.ndarray | None = None,
              threads: int | None = None) -> np.ndarray:
    """``[k + 1, m, n_cells]``: for each row ``r`` of ``counts`` ([m, n] multiplicities, uint16,
    uint32 or float64) and each cell, the sum of ``counts[r, i]`` (index 0) and of
    ``counts[r, i] * values[i, t]`` (index 1 + t) over the items ``i`` of the cell -- ``cells[i]``,
    or ``cells[r, i]`` when ``cells`` is ``[m, n]``. Each sum adds its terms in item order, as
    ``np.bincount`` does."""
    counts = np.asarray(counts)
    if counts.dtype not in (np.uint16, np.uint32, np.float64):
        counts = counts.astype(np.float64)
    n = counts.shape[1] if counts.ndim == 2 else 0
    v = np.zeros((n, 0)) if values is None else np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    return core.cell_sums(np.ascontiguousarray(counts), np.ascontiguousarray(cells, dtype=np.int64), int(n_cells),
                          np.ascontiguousarray(v), resolve_threads(threads))


def weighted_dots(counts: np.ndarray, values: np.ndarray, threads: int | None = None) -> np.ndarray:
    """``counts @ values``: ``[m, k]`` for ``[m, n]`` uint16 / uint32 multiplicities and ``[n, k]``
    values, each dot summed by the core in a fixed order (the same bits at any thread count and
    on every instruction set)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    return core.weighted_dots(np.ascontiguousarray(counts), np.ascontiguousarray(v.T), resolve_threads(threads))


@dataclass(frozen=True)
class McNemarResult:
    b: int
    c: int
    p_exact: float
    p_mid: float


def mcnemar(b: int, c: int) -> McNemarResult:
    """McNemar on the discordant counts (b = correct->incorrect, c = incorrect->correct)."""
    p, mid = core.mcnemar(int(b), int(c))
    return McNemarResult(int(b), int(c), p, mid)


@dataclass(frozen=True)
class PermutationResult:
    statistic: float
    p: float
    resamples: int
    exact: bool


def sign_flip_test(
    d: Any, *, resamples: int = 10_000, seed: int = 0, threads: int | None = None
) -> PermutationResult:
    """Two-sided paired sign-flip permutation test of mean(d) = 0 (exact when 2^n <= resamples)."""
    r = core.sign_flip_test(
        _f64(d, "d"), resamples=int(resamples), seed=int(seed) & 0xFFFFFFFFFFFFFFFF,
        threads=int(threads) if threads else resolve_threads(None),
    )
    return PermutationResult(**r)


def wilson(k: Any, n: Any, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score intervals, elementwise over arrays (or scalars) of k and n."""
    ka = np.atleast_1d(np.asarray(k, dtype=np.int64)).ravel()
    na = np.atleast_1d(np.asarray(n, dtype=np.int64)).ravel()
    ka, na = np.broadcast_arrays(ka, na)
    return core.wilson(np.ascontiguousarray(ka), np.ascontiguousarray(na), float(confidence))


def holm(p: Any) -> np.ndarray:
    return core.holm(_f64(p, "p"))


def benjamini_hochberg(p: Any) -> np.ndarray:
    return core.benjamini_hochberg(_f64(p, "p"))


def adjust_pvalues(p: Any, method: AdjustMethod = "holm") -> np.ndarray:
    """Adjusted p-values over the family of non-NaN entries ("holm" or "bh")."""
    if method == "holm":
        return holm(p)
    if method in ("bh", "fdr_bh"):
        return benjamini_hochberg(p)
    raise ValueError(f"method: expected 'holm' or 'bh', got {method!r}")


def norm_ppf(p: float) -> float:
    return core.norm_ppf(float(p))
