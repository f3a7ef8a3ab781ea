"""Bootstrap and permutation statistics computed in numpy on top of the C++
core's resample draw.

Every bootstrap here uses :func:`qfair.stats.bootstrap_counts`: resample ``b``
of ``n`` examples under ``seed`` has exactly the multiplicities the C++
paired bootstrap uses, so these statistics share the draw of the summary's
other rows. Resamples are processed in blocks (a ``[block, n]`` count
matrix), vectorised over the block.

- :func:`weighted_sums`: ``C @ V`` for every resample -- any statistic that is
  a function of weighted sums (means, ratios of means, stratum means); the
  core's dot of the kept 16-bit counts with each column (a fixed order).
- :func:`spearman` / :func:`spearman_bootstrap`: Spearman's rank correlation
  of a resample is the Pearson correlation of its mid-ranks; with
  multiplicities, a value's mid-rank is the count of smaller values plus
  (its count + 1) / 2, computed from cumulative counts in sorted order.
  ``clusters`` resamples clusters (examples) and weights their rows.
- :func:`spearman_permutation`, :func:`mean_diff_permutation`: permutation
  tests with the conventions of ``scipy.stats.permutation_test`` (exact
  enumeration when it fits in ``resamples``, else random permutations with the
  +1 correction; two-sided p = twice the smaller one-sided p).
- :func:`ttest_rel`: the paired t-test (two-sided), as ``scipy.stats.ttest_rel``.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from qfair import stats

__all__ = ["count_blocks", "clear_draw_cache", "weighted_sums", "spearman", "spearman_bootstrap", "spearman_permutation",
           "spearman_permutations", "mean_diff_permutation", "ttest_rel", "student_t_sf", "rank_average"]

# a block of resamples holds at most this many counts
MAX_BLOCK_CELLS = 2_000_000


# Every statistic of an analysis resamples the same examples under the same seed, so the draw
# ``bootstrap_counts(n, seed, b)`` (which does not depend on the number of resamples) is made once
# and kept for the next statistic: the summary's ratio rows, the study's estimators, the uncertainty
# tests' Spearman and stratum bootstraps all read it. Counts are kept as uint16 (exact: a
# multiplicity never exceeds n, checked for n >= 2**16), within a byte budget equal to the stream's
# chunk budget, so keeping the draw costs no more memory than one streamed chunk of rows.
CACHE_BYTES = 256 << 20
_cache: dict[tuple[int, int], np.ndarray] = {}
# The analysis runs the uncertainty tests beside the summary on a second thread: the kept draw
# is made under this lock (the other thread waits for it instead of drawing it again), and the
# remembered results are read and stored under it (computed outside it).
_lock = threading.RLock()


def _draw_rows(n: int, seed: int, b0: int, b1: int, dtype: type) -> np.ndarray:
    # OverflowError (uint16 only, n >= 2**16) when a multiplicity does not fit: the caller keeps uint32
    return stats.bootstrap_count_rows(n, seed, b0, b1, dtype)


def _counts(n: int, seed: int, resamples: int) -> np.ndarray | None:
    """The counts of resamples 0..resamples-1 (a view of the kept draw), or None when they do not
    fit the budget. A longer draw of the same (n, seed) extends the kept one."""
    with _lock:
        return _counts_locked(n, seed, resamples)


def _counts_locked(n: int, seed: int, resamples: int) -> np.ndarray | None:
    key = (int(n), int(seed))
    have = _cache.get(key)
    if have is not None and have.shape[0] >= resamples:
        _cache[key] = _cache.pop(key)   # most recently used last
        return have[:resamples]
    if n * resamples * 2 > CACHE_BYTES:
        return None
    b0 = 0 if have is None else have.shape[0]
    try:
        more = _draw_rows(n, seed, b0, resamples, np.uint16)
    except OverflowError:
        return None
    m = more if have is None else np.concatenate([have, more])
    _cache.pop(key, None)
    while _cache and sum(v.nbytes for v in _cache.values()) + m.nbytes > CACHE_BYTES:
        _cache.pop(next(iter(_cache)))
    _cache[key] = m
    return m


# Results of the resampling statistics by their exact inputs: a statistic asked twice with the
# same inputs (e.g. the uncertainty tests of a two-choice task, where the choice entropy and
# 1 - confidence rank the examples identically, so every rank-based test of the two is the same
# computation) is computed once. Keys are digests of the inputs' bytes, so a hit is the result
# of the identical call. The oldest results go first beyond MEMO_BYTES.
MEMO_BYTES = 64 << 20
_memo: dict[tuple[Any, ...], Any] = {}


def _key(name: str, *parts: Any) -> tuple[Any, ...]:
    out: list[Any] = [name]
    for p in parts:
        if isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            out.append((a.dtype.str, a.shape, hashlib.blake2b(a.view(np.uint8).ravel(), digest_size=16).digest()))
        else:
            out.append(p)
    return tuple(out)


def _remembered(key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
    with _lock:
        if key in _memo:
            return _memo[key]
    value = compute()
    size = int(getattr(value, "nbytes", 0))
    if size <= MEMO_BYTES:
        with _lock:
            while _memo and sum(int(getattr(v, "nbytes", 0)) for v in _memo.values()) + size > MEMO_BYTES:
                _memo.pop(next(iter(_memo)))
            _memo[key] = value
    return value


def _recalled(key: tuple[Any, ...]) -> tuple[bool, Any]:
    """(True, the remembered result) or (False, None)."""
    with _lock:
        return (True, _memo[key]) if key in _memo else (False, None)


def clear_draw_cache() -> None:
    """Forget the kept draws and remembered results (their memory goes back)."""
    with _lock:
        _cache.clear()
        _memo.clear()


def count_blocks(n: int, seed: int, resamples: int, *, width: int | None = None,
                 raw: bool = False) -> Iterator[np.ndarray]:
    """Yield ``[block, n]`` float64 multiplicity matrices of resamples 0..B-1 in order. ``raw``:
    the counts as drawn instead (uint16 views of the kept draw, or uint32 rows), read-only and
    without a float64 copy, for :func:`qfair.stats.cell_sums`."""
    w = max(1, int(width or n))
    block = max(1, min(int(resamples), MAX_BLOCK_CELLS // w))
    cached = _counts(n, seed, resamples)
    for b0 in range(0, int(resamples), block):
        b1 = min(int(resamples), b0 + block)
        c = cached[b0:b1] if cached is not None else _draw_rows(n, seed, b0, b1, np.uint32)
        if raw:
            c = c.view()
            c.flags.writeable = False  # a view of the kept draw: the next statistic reads it too
            yield c
        else:
            yield c.astype(np.float64)


def weighted_sums(v: np.ndarray, *, seed: int, resamples: int, threads: int | None = None) -> np.ndarray:
    """``[B, m]``: the column sums of ``v`` ([n, m]) weighted by each resample's multiplicities
    (the same bits at any ``threads``)."""
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]

    def compute() -> np.ndarray:
        out = [stats.weighted_dots(c, v, threads) for c in count_blocks(v.shape[0], seed, resamples, raw=True)]
        return np.concatenate(out, axis=0) if out else np.zeros((0, v.shape[1]))

    return _remembered(_key("weighted_sums", v, int(seed), int(resamples)), compute).copy()


def rank_average(x: np.ndarray) -> np.ndarray:
    """Mid-ranks (1-based, ties averaged) -- ``scipy.stats.rankdata(method='average')``."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    counts = np.diff(np.r_[starts, xs.size])
    mid = starts + (counts + 1) / 2.0
    r = np.empty(x.size)
    r[order] = np.repeat(mid, counts)
    return r


def _order_and_ends(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A stable argsort of ``v`` and, per sorted position, the last sorted position
    of its tie group (the layout the core's weighted Spearman reads)."""
    order = np.argsort(v, kind="stable")
    vs = v[order]
    last = np.flatnonzero(np.r_[vs[1:] != vs[:-1], True]) if vs.size else np.zeros(0, np.int64)
    ends = np.repeat(last, np.diff(np.r_[-1, last]))
    return order.astype(np.int64), ends.astype(np.int64)


def _weighted_pearson(w: np.ndarray, rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Pearson correlation of mid-ranks under multiplicities ``w``: the ranks of N = sum(w)
    items always average (N + 1) / 2, so only the cross and square sums are needed."""
    tot = w.sum(axis=1)
    m2 = tot * ((tot + 1.0) / 2.0) ** 2
    wrx = w * rx
    sxy = np.einsum("ij,ij->i", wrx, ry) - m2
    sxx = np.einsum("ij,ij->i", wrx, rx) - m2
    syy = np.einsum("ij,ij,ij->i", w, ry, ry) - m2
    den = np.sqrt(np.clip(sxx, 0.0, None) * np.clip(syy, 0.0, None))
    # exact zeros of sxx/syy can come out as rounding noise: treat relative noise as constant
    tiny = 1e-9 * m2
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where((sxx > tiny) & (syy > tiny), sxy / np.where(den > 0, den, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (NaN when either variable is constant)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size < 2:
        return math.nan
    w = np.ones((1, x.size))
    return float(_weighted_pearson(w, rank_average(x)[None, :], rank_average(y)[None, :])[0])


def spearman_bootstrap(x: np.ndarray, y: np.ndarray, *, seed: int, resamples: int,
                       clusters: np.ndarray | None = None, n_clusters: int | None = None,
                       threads: int | None = None) -> np.ndarray:
    """Spearman's rho on every bootstrap resample (NaN where a resample is constant).

    ``y`` may be ``[k, n]`` (k variables against the same ``x``; the result is then
    ``[k, B]``). Without ``clusters`` the n pairs are resampled (the draw of
    ``bootstrap_counts(n, ...)``); with ``clusters`` (an int array, cluster of each
    pair, 0..n_clusters-1) the clusters are resampled and each pair carries its
    cluster's multiplicity. The ranks and sums of each resample are computed by
    the C++ core from the multiplicities, without expanding the sample.
    """
    from qfair._native import core

    x = np.asarray(x, dtype=np.float64)
    ys = np.atleast_2d(np.asarray(y, dtype=np.float64))
    xo, xe = _order_and_ends(x)
    ranked = [_order_and_ends(v) for v in ys]
    yo = np.ascontiguousarray(np.stack([o for o, _ in ranked]) if ranked else np.zeros((0, x.size), np.int64))
    ye = np.ascontiguousarray(np.stack([e for _, e in ranked]) if ranked else np.zeros((0, x.size), np.int64))
    n_draw = x.size if clusters is None else int(n_clusters if n_clusters is not None else clusters.max() + 1)
    cl = None if clusters is None else np.ascontiguousarray(clusters, dtype=np.int64)

    def compute() -> np.ndarray:
        parts = [core.weighted_spearman(c, cl, xo, xe, yo, ye, int(threads or 0))
                 for c in count_blocks(n_draw, seed, resamples, raw=True)]
        return np.concatenate(parts, axis=1) if parts else np.zeros((ys.shape[0], 0))

    # the result depends on the values only through their orders and tie groups
    key = _key("weighted_spearman", xo, xe, yo, ye, np.zeros(0) if cl is None else cl, n_draw, int(seed),
               int(resamples))
    res = _remembered(key, compute).copy()
    return res if np.ndim(y) == 2 else res[0]


def _perm_p(null: np.ndarray, observed: float, exact: bool) -> float:
    """Two-sided p as scipy.stats.permutation_test (values within 100 eps |observed| count as ties)."""
    gamma = abs(100 * np.finfo(np.float64).eps * observed)
    adj = 0 if exact else 1
    less = (np.count_nonzero(null <= observed + gamma) + adj) / (null.size + adj)
    greater = (np.count_nonzero(null >= observed - gamma) + adj) / (null.size + adj)
    return float(min(1.0, 2.0 * min(less, greater)))


def spearman_permutation(x: np.ndarray, y: np.ndarray, *, seed: int, resamples: int,
                         threads: int | None = None) -> float:
    """Permutation p of Spearman's rho (pairings permuted; exact when n! <= resamples;
    the same p at any ``threads``)."""
    return spearman_permutations(x, [y], seed=seed, resamples=resamples, threads=threads)[0]


def spearman_permutations(x: np.ndarray, ys: Sequence[np.ndarray], *, seed: int, resamples: int,
                          threads: int | None = None) -> list[float]:
    """:func:`spearman_permutation` of x against each of ``ys``, the same p's as one
    call each; the random pairings are drawn once for all of them (the shuffle is
    most of the cost)."""
    rx = rank_average(np.asarray(x, dtype=np.float64))
    rys = [rank_average(np.asarray(y, dtype=np.float64)) for y in ys]
    # the p depends on the values only through their ranks
    keys = [_key("spearman_permutation", rx, ry, int(seed), int(resamples)) for ry in rys]
    got = {}
    for i, k in enumerate(keys):
        hit, p = _recalled(k)
        if hit:
            got[i] = p
    todo = [i for i in range(len(keys)) if i not in got]
    if todo:
        for i, p in zip(todo, _spearman_permutations(rx, [rys[i] for i in todo], seed, resamples, threads)):
            got[i] = _remembered(keys[i], lambda p=p: p)
    return [got[i] for i in range(len(keys))]


def _spearman_permutations(rx: np.ndarray, rys: list[np.ndarray], seed: int, resamples: int,
                           threads: int | None = None) -> list[float]:
    n = rx.size
    dx = rx - rx.mean()
    out: list[float] = [math.nan] * len(rys)
    live, dys, dens, observed = [], [], [], []
    for t, ry in enumerate(rys):
        dy = ry - ry.mean()
        den = math.sqrt(float((dx * dx).sum() * (dy * dy).sum()))
        if n < 2 or den == 0:
            continue
        live.append(t)
        dys.append(dy)
        dens.append(den)
        observed.append(float((dx * dy).sum() / den))
    if not live:
        return out
    exact = math.factorial(n) <= resamples if n <= 20 else False
    if exact:
        perms = np.array(list(itertools.permutations(range(n))), dtype=np.int64)
        nulls = [(dy[perms] @ dx) / den for dy, den in zip(dys, dens)]
    else:
        from qfair._native import core

        sums = core.pairings_dot(np.ascontiguousarray(dx), np.ascontiguousarray(np.stack(dys)), int(resamples),
                                 int(seed) & 0xFFFFFFFFFFFFFFFF, int(threads or 0))
        nulls = [sums[k] / den for k, den in enumerate(dens)]
    for t, null, obs in zip(live, nulls, observed):
        out[t] = _perm_p(null, obs, exact)
    return out


def mean_diff_permutation(a: np.ndarray, b: np.ndarray, *, seed: int, resamples: int,
                          threads: int | None = None) -> float:
    """Two-sample permutation p of mean(a) - mean(b) (labels permuted; exact when C(n, n_a) <= resamples;
    the same p at any ``threads``)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return _remembered(_key("mean_diff_permutation", a, b, int(seed), int(resamples)),
                       lambda: _mean_diff_permutation(a, b, seed, resamples, threads))


def _mean_diff_permutation(a: np.ndarray, b: np.ndarray, seed: int, resamples: int,
                           threads: int | None = None) -> float:
    na, nb = a.size, b.size
    if na == 0 or nb == 0:
        return math.nan
    z = np.concatenate([a, b])
    n = z.size
    observed = float(a.mean() - b.mean())
    total = z.sum()
    exact = math.comb(n, na) <= resamples
    if exact:
        combos = np.array(list(itertools.combinations(range(n), na)), dtype=np.int64)
        sa = z[combos].sum(axis=1)
    else:
        from qfair._native import core

        sa = core.subset_sums(np.ascontiguousarray(z), na, int(resamples), int(seed) & 0xFFFFFFFFFFFFFFFF,
                              int(threads or 0))
    null = sa / na - (total - sa) / nb
    return _perm_p(null, observed, exact)


# ---------------------------------------------------------------------------
# the paired t-test


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t > 0 else 1.0 - tail


def ttest_rel(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(t, two-sided p) of the paired t-test of mean(x - y) = 0, as scipy.stats.ttest_rel(x, y)."""
    d = np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)
    n = d.size
    if n < 2:
        return math.nan, math.nan
    m = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        if m == 0.0:
            return math.nan, math.nan
        return math.copysign(math.inf, m), 0.0
    t = m / (sd / math.sqrt(n))
    return t, min(1.0, 2.0 * student_t_sf(abs(t), n - 1))
