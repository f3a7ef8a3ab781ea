"""Paired bootstrap: qfair's C++ core against scipy.stats.bootstrap.

The DESIGN.md target: 10,000 paired resamples over 10,000 examples for the
accuracy difference and the ECE difference (15 equal-width bins, re-binned on
every resample), >= 50x faster than scipy.stats.bootstrap, same interval within
Monte-Carlo error, identical output for the same seed at any thread count.

scipy gets the fairest setup we know: a vectorized numpy statistic (one
bincount over all resamples of a batch) and ``batch`` to bound its memory.
Both sides compute BCa intervals (which include a jackknife over the n examples).

    .venv/bin/python bench/bench_bootstrap.py            # n = B = 10,000
    .venv/bin/python bench/bench_bootstrap.py --n 2000 --resamples 2000   # quick
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def synthetic(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    cx = rng.beta(5, 2, n)
    x = (rng.uniform(size=n) < cx * 0.9).astype(float)
    cy = np.clip(cx + rng.normal(0.02, 0.08, n), 0, 1)
    y = np.where(rng.uniform(size=n) < 0.08, 1 - x, x)
    return cx, x, cy, y


def ece_batched(conf, correct, bins, axis=-1):
    """ECE over the last axis of (batch, n) arrays: equal-width (lo, hi], 0 in bin 0."""
    conf = np.moveaxis(np.asarray(conf), axis, -1)
    correct = np.moveaxis(np.asarray(correct), axis, -1)
    shape = conf.shape[:-1]
    c2 = conf.reshape(-1, conf.shape[-1])
    a2 = correct.reshape(-1, correct.shape[-1])
    m, n = c2.shape
    b = np.clip(np.ceil(c2 * bins).astype(np.int64) - 1, 0, bins - 1)
    idx = (np.arange(m)[:, None] * bins + b).ravel()
    cnt = np.bincount(idx, minlength=m * bins).reshape(m, bins)
    sc = np.bincount(idx, weights=c2.ravel(), minlength=m * bins).reshape(m, bins)
    sa = np.bincount(idx, weights=a2.ravel(), minlength=m * bins).reshape(m, bins)
    return (np.abs(sa - sc).sum(axis=1) / n).reshape(shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--bins", type=int, default=15)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--batch", type=int, default=250, help="scipy's batch (bounds its memory)")
    ap.add_argument("--skip-scipy", action="store_true")
    args = ap.parse_args()

    from qfair import stats

    n, B, bins = args.n, args.resamples, args.bins
    cx, x, cy, y = synthetic(n)
    specs = [stats.MeanDiff(y, x), stats.CalibrationDiff(cy, y, cx, x, bins=bins)]
    print(f"n = {n} examples, B = {B} paired resamples, statistics: accuracy diff, ECE diff ({bins} bins)")

    times = {}
    outs = {}
    cpu_ours = None
    for t in sorted({1, args.threads}):
        t0, c0 = time.perf_counter(), time.process_time()
        outs[t] = stats.paired_bootstrap(specs, resamples=B, seed=1, threads=t, keep_distribution=True)
        times[t] = time.perf_counter() - t0
        cpu = time.process_time() - c0
        if t == 1:
            cpu_ours = cpu
        print(f"qfair  threads={t}: {times[t]:.3f} s wall, {cpu:.3f} s CPU  (both statistics, percentile + BCa + p)")
    ts = sorted(outs)
    same = all(np.array_equal(a.distribution, b.distribution) for a, b in zip(outs[ts[0]], outs[ts[-1]]))
    print(f"identical distributions across thread counts: {same}")
    ours = outs[ts[-1]]
    best = min(times.values())

    if args.skip_scipy:
        return
    from scipy import stats as ss

    c0 = time.process_time()
    t0 = time.perf_counter()
    r_acc = ss.bootstrap((x, y), lambda a, b, axis: np.mean(b - a, axis=axis), paired=True, vectorized=True,
                         n_resamples=B, batch=args.batch, method="BCa", rng=np.random.default_rng(0))
    t_acc = time.perf_counter() - t0
    t0 = time.perf_counter()
    r_ece = ss.bootstrap((cx, x, cy, y),
                         lambda cx, x, cy, y, axis: ece_batched(cy, y, bins, axis) - ece_batched(cx, x, bins, axis),
                         paired=True, vectorized=True, n_resamples=B, batch=args.batch, method="BCa",
                         rng=np.random.default_rng(0))
    t_ece = time.perf_counter() - t0
    cpu_scipy = time.process_time() - c0
    t_scipy = t_acc + t_ece
    print(f"scipy.stats.bootstrap (BCa, vectorized, batch={args.batch}): accuracy {t_acc:.2f} s + ECE {t_ece:.2f} s "
          f"= {t_scipy:.2f} s")
    print(f"speed-up (wall): {t_scipy / best:.0f}x (qfair best of thread counts {ts}); "
          f"single-thread CPU time: scipy {cpu_scipy:.2f} s vs qfair {cpu_ours:.3f} s = {cpu_scipy / cpu_ours:.0f}x")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name, o, r in (("accuracy diff", ours[0], r_acc), ("ECE diff", ours[1], r_ece)):
        ci = r.confidence_interval
        print(f"{name:14s} estimate {o.estimate:+.5f}  qfair BCa [{o.bca_lo:+.5f}, {o.bca_hi:+.5f}]  "
              f"scipy BCa [{ci.low:+.5f}, {ci.high:+.5f}]  se {o.se:.5f} vs {r.standard_error:.5f}")


if __name__ == "__main__":
    main()
