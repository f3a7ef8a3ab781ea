"""The resampling of the uncertainty tests: the C++ core against the vectorised
numpy implementations it replaced, in the same run -- the bootstrap of
Spearman's rho, and the permutation nulls of Spearman's rho (pairings) and of a
difference of means (subsets).

Token-level uncertainty rows resample whole examples (a cluster bootstrap), so
each resample ranks every token row under its example's multiplicity. The numpy
version does this on [block, n] matrices (gather, cumulative sums, scatter and
three einsums per variable); the core walks each variable's sorted order once
per resample. Both are checked to agree to 1e-12 first.

    nice -n 10 .venv/bin/python bench/bench_spearman.py --rows 20000 --examples 2000 --resamples 1000

The permutation nulls are drawn from other generators than before (the core's
streams instead of numpy's), so they are compared by their spread, not value by
value.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import numpy as np

from qfair.metrics import resampling as R


class NumpyRanker:
    """Mid-ranks of fixed values under varying multiplicities, on [block, n] matrices."""

    def __init__(self, x: np.ndarray) -> None:
        self.order = np.argsort(x, kind="stable")
        xs = x[self.order]
        self.starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
        self.group = np.repeat(np.arange(self.starts.size), np.diff(np.r_[self.starts, xs.size]))

    def ranks(self, w: np.ndarray) -> np.ndarray:
        ws = w[:, self.order]
        cs = np.cumsum(ws, axis=1)
        ends = np.r_[self.starts[1:], ws.shape[1]] - 1
        c_end = cs[:, ends]
        g = c_end - np.concatenate([np.zeros((ws.shape[0], 1)), c_end[:, :-1]], axis=1)
        mid = (c_end - 0.5 * (g - 1.0))[:, self.group]
        out = np.empty_like(w)
        out[:, self.order] = mid
        return out


def numpy_spearman_bootstrap(x, ys, clusters, n_clusters, seed, resamples):
    rx, rys = NumpyRanker(x), [NumpyRanker(v) for v in ys]
    out = [[] for _ in rys]
    for c in R.count_blocks(n_clusters, seed, resamples, width=x.size * (1 + len(rys))):
        w = c[:, clusters]
        ranks_x = rx.ranks(w)
        for k, ry in enumerate(rys):
            out[k].append(R._weighted_pearson(w, ranks_x, ry.ranks(w)))
    return np.stack([np.concatenate(o) for o in out])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--examples", type=int, default=2_000)
    ap.add_argument("--variables", type=int, default=4)
    ap.add_argument("--resamples", type=int, default=1_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    clusters = np.sort(rng.integers(0, args.examples, args.rows))
    x = rng.gamma(2.0, 1.0, args.rows).round(3)
    ys = np.stack([0.2 * x + rng.normal(size=args.rows) for _ in range(args.variables)])
    ys[0] = np.where(rng.random(args.rows) < 0.4, 0.0, ys[0])  # ties, as top1_change has
    print(f"# load before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    stats_args = dict(seed=1, resamples=args.resamples)
    ref = numpy_spearman_bootstrap(x, ys, clusters, args.examples, **stats_args)
    got = R.spearman_bootstrap(x, ys, clusters=clusters, n_clusters=args.examples, **stats_args)
    err = float(np.nanmax(np.abs(ref - got)))
    assert err < 1e-12, err
    times = {"numpy (previous)": [], "qfair core": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        numpy_spearman_bootstrap(x, ys, clusters, args.examples, **stats_args)
        times["numpy (previous)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        R.spearman_bootstrap(x, ys, clusters=clusters, n_clusters=args.examples, **stats_args)
        times["qfair core"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.rows} rows in {args.examples} examples, {args.variables} variables, B = {args.resamples}; "
          f"max |difference| {err:.1e}")
    for k, v in med.items():
        print(f"  {k:18s} {v:8.3f} s (median of {args.repeats})")
    print(f"  ratio numpy / core: {med['numpy (previous)'] / med['qfair core']:.1f}x")
    # permutation nulls over the examples (B = 10,000, as the analysis runs them)
    from qfair._native import core

    n, B = args.examples, 10_000
    dx, dy = rng.normal(size=n), rng.normal(size=n)

    def numpy_pairings():
        g = np.random.default_rng(0)
        out = np.empty(B)
        block = max(1, R.MAX_BLOCK_CELLS // n)
        for b0 in range(0, B, block):
            idx = g.permuted(np.broadcast_to(np.arange(n), (min(B, b0 + block) - b0, n)), axis=1)
            out[b0:b0 + idx.shape[0]] = dy[idx] @ dx
        return out

    pt = {"numpy (previous)": [], "qfair core": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        a = numpy_pairings()
        pt["numpy (previous)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        c = core.pairings_dot(dx, dy, B, 0, 0)
        pt["qfair core"].append(time.perf_counter() - t)
    pm = {k: statistics.median(v) for k, v in pt.items()}
    print(f"pairings null, {n} examples, B = {B}: null sd numpy {a.std():.3f} / core {c.std():.3f}")
    for k, v in pm.items():
        print(f"  {k:18s} {v:8.3f} s (median of {args.repeats})")
    print(f"  ratio numpy / core: {pm['numpy (previous)'] / pm['qfair core']:.1f}x")
    print(f"# load after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
