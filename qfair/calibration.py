"""Top-label calibration of a model's choice distribution.

``calibration(conf, correct)`` returns ECE, MCE, RMS-CE, the debiased L2
estimator of Kumar et al. (2019) and the reliability-diagram table (one row per
bin: lo, hi, n, mean confidence, accuracy). Conventions (docs/metrics.md):

- equal-width bins ``(lo, hi]`` with edges ``k/B``; a confidence of exactly 0
  falls in the first bin, exactly 1 in the last;
- equal-mass bins: the sorted confidences split into ``min(B, n)`` near-equal
  groups (``np.array_split``), edges at the mid-points between neighbouring
  groups, duplicate edges merged, a value equal to an edge in the lower bin
  (the convention of Kumar et al.'s ``calibration`` package);
- ``correct`` is 1[prediction = gold], never the label index.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

from qfair._native import core

Binning = Literal["width", "mass"]

__all__ = ["CalibrationResult", "calibration", "bin_assign"]


@dataclass(frozen=True)
class CalibrationResult:
    ece: float
    mce: float
    rms: float
    ce2_debiased: float
    l2_debiased: float
    bins: pl.DataFrame  # bin, lo, hi, n, conf_mean, acc_mean, gap


def _check(conf: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    c = np.ascontiguousarray(conf, dtype=np.float64).ravel()
    a = np.ascontiguousarray(correct, dtype=np.float64).ravel()
    if c.shape != a.shape:
        raise ValueError(f"conf and correct differ in length: {c.size} vs {a.size}")
    if c.size and (not np.all(np.isfinite(c)) or c.min() < 0.0 or c.max() > 1.0 + 1e-9):
        raise ValueError("conf: expected finite confidences in [0, 1]")
    return np.minimum(c, 1.0), a


def calibration(conf: Any, correct: Any, *, bins: int = 15, binning: Binning = "width") -> CalibrationResult:
    """Calibration error of top-label confidences against 0/1 correctness."""
    c, a = _check(conf, correct)
    r = core.calibration(c, a, int(bins), binning)
    table = pl.DataFrame(
        {
            "bin": np.arange(len(r["count"]), dtype=np.int32),
            "lo": r["lo"],
            "hi": r["hi"],
            "n": r["count"],
            "conf_mean": r["conf_mean"],
            "acc_mean": r["acc_mean"],
        }
    ).with_columns((pl.col("acc_mean") - pl.col("conf_mean")).alias("gap"))
    return CalibrationResult(
        ece=r["ece"], mce=r["mce"], rms=r["rms"], ce2_debiased=r["ce2_debiased"],
        l2_debiased=r["l2_debiased"], bins=table,
    )


def bin_assign(conf: Any, *, bins: int = 15, binning: Binning = "width") -> tuple[np.ndarray, np.ndarray]:
    """Bin index of each confidence and the upper edge of each bin."""
    c = np.minimum(np.ascontiguousarray(conf, dtype=np.float64).ravel(), 1.0)
    return core.bin_assign(c, int(bins), binning)
