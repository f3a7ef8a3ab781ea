"""The reference study's own calibration estimators, reproduced as published.

Proskurina et al., "When Quantization Affects Confidence of Large Language
Models?" (Findings of NAACL 2024) compute their calibration errors in a
notebook of their repository (upunaprosk/quantized-lm-confidence,
``3_Calibration_Error_Metrics.ipynb``). qfair reproduces them under the
names ``ace_study`` and ``mce_study``, quirks included, next to its own
top-label estimators (docs/metrics.md explains each difference). With
``y_pred`` the N x K choice distributions, ``c`` = max_k y_pred, ``pred`` =
argmax (first index), ``y`` the gold index:

- K > 2, ``ace_study`` (their ``ace``, R = 15 ranges): thresholds
  ``t_r = sort(c)[r * floor(N / R)]``; an example goes to the first range with
  ``c <= t_r`` and, when there is none (the top of the data), to range 0;
  ACE = sum over non-empty (range, gold class k) cells of
  ``|mean(pred == k) - mean(c)|``, divided by ``K * R``.
- K > 2, ``mce_study`` (their ``mce``, 100 bins): bin = ``np.digitize(c,
  np.arange(0, 1, 1/100))``; bins 0..99 are visited (so ``c >= 0.99`` is never
  counted); MCE = the largest ``|mean(pred == k) - mean(c)|`` over non-empty
  (bin, gold class) cells, -1 when there is none.
- K = 2, ``ace_study`` (their ``ece``, 100 bins): per bin as above,
  ``sum_b n_b / N * |mean_b(c) - mean_b(y)|`` with ``y`` the gold *label index*
  (not correctness);
- K = 2, ``mce_study`` (their ``mce_binary``): ``max_b (mean_b(c) - mean_b(y))``,
  signed, over the non-empty bins.

Every estimator takes multiplicities ``w`` (``[B, N]``, one row per bootstrap
resample; a row of ones is the plain estimate) and is vectorised over rows; uint16 / uint32
counts (the kept bootstrap draw) are read as they are, without a float64 copy, by the core's
per-cell sums (``qfair.stats.cell_sums``).
"""
from __future__ import annotations

import numpy as np

from qfair import stats

__all__ = ["study_ace", "study_mce", "study_calibration", "STUDY_RANGES", "STUDY_BINS"]

STUDY_RANGES = 15   # their ace() default
STUDY_BINS = 100    # their mce(num_bins=100), mce_binary and ece defaults


def _prep(probs: np.ndarray, labels: np.ndarray, w: np.ndarray | None):
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs: expected an N x K matrix, got shape {probs.shape}")
    y = np.asarray(labels, dtype=np.int64)
    if y.shape[0] != probs.shape[0]:
        raise ValueError(f"labels: {y.shape[0]} values for {probs.shape[0]} rows of probs")
    n = probs.shape[0]
    if w is None:
        w = np.ones((1, n))
    else:
        w = np.atleast_2d(np.asarray(w))
        if w.dtype not in (np.uint16, np.uint32):  # the kept draw's counts are read as they are
            w = w.astype(np.float64)
    c = probs.max(axis=1)
    pred = probs.argmax(axis=1)
    return probs, y, w, c, pred


def _cell_sums(w: np.ndarray, idx: np.ndarray, n_cells: int, *values: np.ndarray,
               threads: int | None = None) -> list[np.ndarray]:
    """Per resample row and cell: sum of w (and of w * value for each value). ``idx`` is the cell
    of each item ([N]) or of each item in each row ([B, N]); sums in item order (np.bincount's)."""
    v = np.column_stack(values) if values else None
    return list(stats.cell_sums(w, idx, n_cells, v, threads=threads))


def _digitize(c: np.ndarray, bins: int) -> np.ndarray:
    return np.digitize(c, np.arange(0.0, 1.0, 1.0 / bins))


def _binary_cells(prep: tuple, bins: int, cells: dict[int, list[np.ndarray]],
                  threads: int | None = None) -> list[np.ndarray]:
    """Per resample row and bin of ``_digitize(c, bins)``: sum of w, of w * c and of w * y; kept in
    ``cells`` for the other binary estimator of the same call (both use 100 bins by default)."""
    if bins not in cells:
        _, y, w, c, _ = prep
        cells[bins] = _cell_sums(w, _digitize(c, bins), bins + 1, c, y.astype(np.float64), threads=threads)
    return cells[bins]


def _first_ranges(c: np.ndarray, cs: np.ndarray, cw: np.ndarray, step: int, ranges: int, search: bool) -> np.ndarray:
    """``[B, N]``: per row, how many of the row's range thresholds lie below each ``c`` (the first
    range with ``c <= t_r``; ``ranges`` when there is none). ``cs`` is ``c`` sorted and ``cw`` the
    rows' cumulative weights in that order. ``search`` (weights >= 0, no NaN confidence): rows of
    ``cw`` and of the thresholds are non-decreasing, so both counts are binary searches per row --
    the same integers as the ``[B, N, R]`` comparisons, without them."""
    n = c.size
    pos = np.arange(0, step * ranges, step, dtype=np.float64)
    if search:
        nb = cw.shape[0]
        j = np.array([np.searchsorted(row, pos, side="right") for row in cw], dtype=np.int64).reshape(nb, ranges)
        t = cs[np.minimum(j, n - 1)]
        return np.array([np.searchsorted(row, c, side="left") for row in t], dtype=np.int64).reshape(nb, n)
    # threshold r of each row: the sorted value at multiset position r * step
    j = (cw[:, :, None] <= pos[None, None, :]).sum(axis=1)            # [B, R]
    t = cs[np.minimum(j, n - 1)]
    return (t[:, None, :] < c[None, :, None]).sum(axis=2)


def study_ace(probs: np.ndarray, labels: np.ndarray, w: np.ndarray | None = None, *,
              ranges: int = STUDY_RANGES, binary_bins: int = STUDY_BINS, threads: int | None = None) -> np.ndarray:
    """The study's ``ace`` (K > 2) or binary ``ece`` (K = 2), one value per row of ``w``."""
    return _ace(_prep(probs, labels, w), ranges, binary_bins, {}, threads)


def _ace(prep: tuple, ranges: int, binary_bins: int, cells: dict[int, list[np.ndarray]],
         threads: int | None = None) -> np.ndarray:
    probs, y, w, c, pred = prep
    n, k = probs.shape
    if n == 0:
        return np.full(w.shape[0], np.nan)
    if k <= 2:
        cnt, sc, sy = _binary_cells(prep, binary_bins, cells, threads)
        # whole counts: their total is exactly the sum of the cells' counts (no pass over w)
        tot = cnt.sum(axis=1) if w.dtype.kind == "u" else w.sum(axis=1, dtype=np.float64)
        return np.abs(sc - sy).sum(axis=1) / tot
    step = n // ranges
    if step == 0:  # their code cannot run with fewer examples than ranges
        return np.full(w.shape[0], np.nan)
    order = np.argsort(c, kind="stable")
    cs = c[order]
    cw = np.cumsum(w[:, order], axis=1, dtype=np.float64)
    search = (w.dtype.kind == "u" or bool((w >= 0).all())) and not np.isnan(c).any()
    first = _first_ranges(c, cs, cw, step, ranges, search)
    bins = np.where(first >= ranges, 0, first)                         # argmax of an all-False row is 0
    correct = (pred == y).astype(np.float64)
    cnt, sa, sc = _cell_sums(w, bins * k + y[None, :], ranges * k, correct, c, threads=threads)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(cnt > 0, np.abs(sa - sc) / np.where(cnt > 0, cnt, 1.0), 0.0)
    return gap.sum(axis=1) / (k * ranges)


def study_mce(probs: np.ndarray, labels: np.ndarray, w: np.ndarray | None = None, *,
              bins: int = STUDY_BINS, threads: int | None = None) -> np.ndarray:
    """The study's ``mce`` (K > 2, class-wise, bins 0..bins-1 visited) or ``mce_binary`` (K = 2, signed)."""
    return _mce(_prep(probs, labels, w), bins, {}, threads)


def _mce(prep: tuple, bins: int, cells: dict[int, list[np.ndarray]], threads: int | None = None) -> np.ndarray:
    probs, y, w, c, pred = prep
    n, k = probs.shape
    if n == 0:
        return np.full(w.shape[0], np.nan)
    if k <= 2:
        cnt, sc, sy = _binary_cells(prep, bins, cells, threads)
        with np.errstate(invalid="ignore", divide="ignore"):
            gap = np.where(cnt > 0, (sc - sy) / np.where(cnt > 0, cnt, 1.0), -np.inf)
        return gap.max(axis=1)
    d = _digitize(c, bins)
    correct = (pred == y).astype(np.float64)
    visited = d < bins
    idx = np.where(visited, d * k + y, bins * k + y)   # cells of bin `bins` are never visited
    cnt, sa, sc = _cell_sums(w, idx, (bins + 1) * k, correct, c, threads=threads)
    cnt, sa, sc = cnt[:, : bins * k], sa[:, : bins * k], sc[:, : bins * k]
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(cnt > 0, np.abs(sa - sc) / np.where(cnt > 0, cnt, 1.0), -1.0)
    return np.maximum(gap.max(axis=1), -1.0)


def study_calibration(probs: np.ndarray, labels: np.ndarray, w: np.ndarray | None = None, *,
                      ranges: int = STUDY_RANGES, binary_bins: int = STUDY_BINS,
                      bins: int = STUDY_BINS, threads: int | None = None) -> dict[str, np.ndarray]:
    """``{"ace_study": ..., "mce_study": ...}``, one value per row of ``w`` (``threads``: the core's
    per-cell sums; the values do not depend on it)."""
    prep = _prep(probs, labels, w)
    cells: dict[int, list[np.ndarray]] = {}
    return {"ace_study": _ace(prep, ranges, binary_bins, cells, threads), "mce_study": _mce(prep, bins, cells, threads)}
