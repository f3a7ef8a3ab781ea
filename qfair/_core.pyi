# Type stubs for the compiled extension qfair._core (hand-written; keep in
# step with cpp/bindings/). The public, documented API is qfair.divergence and
# friends; these are the raw bindings underneath.
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

# ---- divergence core (cpp/bindings/bind_divergence.cpp) -------------------

def divergence(
    p: npt.NDArray[Any],
    q: npt.NDArray[Any],
    targets: npt.NDArray[np.integer[Any]] | None = None,
    topk: Sequence[int] = (1, 5, 10),
    threads: int = 0,
    dtype: str = "",
    metrics: Sequence[str] | None = None,
) -> dict[str, Any]:
    """{'metrics': {name: ndarray}, 'invalid_p': int, 'invalid_q': int, 'invalid_rows': int}"""

def read_rows(p: npt.NDArray[Any], threads: int = 0, dtype: str = "") -> int:
    """XOR of the rows' 64-bit words: a pure read, the memory-bound ceiling."""

def distribution_stats(
    p: npt.NDArray[Any],
    targets: npt.NDArray[np.integer[Any]] | None = None,
    threads: int = 0,
    dtype: str = "",
) -> dict[str, Any]:
    """{'metrics': {name: ndarray}, 'invalid_rows': int}"""

def llamacpp_token_stats(
    q: npt.NDArray[Any],
    base: npt.NDArray[Any],
    targets: npt.NDArray[np.integer[Any]],
    threads: int = 0,
    dtype: str = "",
) -> dict[str, Any]:
    """{'nll', 'nll_base': float32, 'kld': float64, 'p_diff': float32, 'argmax_q', 'argmax_base': int64}"""

# ---- runtime (cpp/bindings/bind_runtime.cpp) ---------------------------------

def active_isa() -> str: ...
def available_isas() -> list[str]:
    """Instruction sets this build has and this CPU runs, widest first."""
def select_isa(cap: str) -> str: ...
def kernel_exp(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """e^x (x <= 0) as the active vector kernel computes it, flat float32."""

def resolve_threads(threads: int = 0) -> int:
    """Threads a call given `threads` starts (0: one per available CPU; capped;
    negative raises ValueError)."""

# ---- statistics (cpp/bindings/bind_stats.cpp) ------------------------------
# (owned by the analyze work; typed wrappers in qfair/stats.py and qfair/calibration.py)

def norm_ppf(p: float) -> float: ...
def wilson(
    k: npt.NDArray[np.int64], n: npt.NDArray[np.int64], confidence: float = 0.95
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...
def mcnemar(b: int, c: int) -> tuple[float, float]:
    """(exact two-sided p, mid-p)"""
def holm(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...
def benjamini_hochberg(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...
def bin_assign(
    conf: npt.NDArray[np.float64], bins: int = 15, binning: str = "width"
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float64]]: ...
def calibration(
    conf: npt.NDArray[np.float64],
    correct: npt.NDArray[np.float64],
    bins: int = 15,
    binning: str = "width",
) -> dict[str, Any]:
    """{'ece', 'mce', 'rms', 'ce2_debiased', 'l2_debiased': float,
    'lo', 'hi', 'conf_mean', 'acc_mean': ndarray[float64], 'count': ndarray[int64]}"""
def bootstrap_counts(n: int, seed: int, b: int) -> npt.NDArray[np.uint32]: ...
def paired_bootstrap(
    specs: list[dict[str, Any]],
    resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
    threads: int = 0,
    keep_distribution: bool = False,
) -> list[dict[str, Any]]:
    """specs: {'kind': 'mean', 'y', 'x'?} or {'kind': 'calibration', 'conf_y',
    'correct_y', 'conf_x'?, 'correct_x'?, 'bins', 'binning', 'measure'}; each
    result: estimate, se, bias, pct_lo, pct_hi, bca_lo, bca_hi, z0, accel, p,
    distribution (ndarray or None)."""
def bootstrap_count_rows(
    n: int, seed: int, b0: int, rows: int, dtype: str = "uint16", threads: int = 0
) -> npt.NDArray[np.uint16] | npt.NDArray[np.uint32]:
    """[rows, n]: bootstrap_counts(n, seed, b0 + i) in row i (OverflowError: a uint16 count overflows)."""
def cell_sums(
    counts: npt.NDArray[np.uint16] | npt.NDArray[np.uint32] | npt.NDArray[np.float64],
    cells: npt.NDArray[np.int64],
    n_cells: int,
    values: npt.NDArray[np.float64],
    threads: int = 0,
) -> npt.NDArray[np.float64]:
    """[k + 1, rows, n_cells]: per row and cell, sum of w and of w * values[:, t] (item order)."""
def weighted_dots(
    counts: npt.NDArray[np.uint16] | npt.NDArray[np.uint32],
    values: npt.NDArray[np.float64],
    threads: int = 0,
) -> npt.NDArray[np.float64]:
    """[rows, k]: counts @ values.T, values given as [k, n] columns."""
def weighted_spearman(
    counts: npt.NDArray[np.float64] | npt.NDArray[np.uint16] | npt.NDArray[np.uint32],
    clusters: npt.NDArray[np.int64] | None,
    x_order: npt.NDArray[np.int64],
    x_end: npt.NDArray[np.int64],
    y_order: npt.NDArray[np.int64],
    y_end: npt.NDArray[np.int64],
    threads: int = 0,
) -> npt.NDArray[np.float64]:
    """[k, resamples]: Spearman's rho of x against each y under each row of multiplicities."""
def pairings_dot(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], resamples: int, seed: int = 0, threads: int = 0
) -> npt.NDArray[np.float64]:
    """sum_i a[i] * b[perm_r(i)] for `resamples` uniform random permutations; b [k, n]: one row of
    sums per row of b ([k, resamples]), the permutations shared, each row as b[t] alone."""
def subset_sums(
    z: npt.NDArray[np.float64], k: int, resamples: int, seed: int = 0, threads: int = 0
) -> npt.NDArray[np.float64]:
    """Sums of z over `resamples` uniform random k-subsets."""
def sign_flip_test(
    d: npt.NDArray[np.float64], resamples: int = 10000, seed: int = 0, threads: int = 0
) -> dict[str, Any]:
    """{'statistic': float, 'p': float, 'resamples': int, 'exact': bool}"""
