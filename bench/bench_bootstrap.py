"""Paired bootstrap: qfair's C++ core against scipy.stats.bootstrap.

The project's target: 10,000 paired resamples over 10,000 examples for the
accuracy difference and the ECE difference (15 equal-width bins, re-binned on
every resample), >= 50x faster than scipy.stats.bootstrap, same interval within
Monte-Carlo error, identical output for the same seed at any thread count.

scipy gets the fairest setup we know: a vectorized numpy statistic (one
bincount over all resamples of a batch) and ``batch`` to bound its memory.
Both sides compute BCa intervals (which include a jackknife over the n examples).

    .venv/bin/python bench/bench_bootstrap.py            # n = B = 10,000
    .venv/bin/python bench/bench_bootstrap.py --n 2000 --resamples 2000   # quick

End-to-end ``qfair.compare`` throughput (--analyze-rows R): two synthetic dumps
of R logits rows over a 49,152-token vocabulary (f16, SmolLM2's size), four
choices of eight tokens per example, then the whole analysis (token streaming,
example tables, bootstrap with --resamples, groups, strata) timed, with the
peak resident memory of the process.

    .venv/bin/python bench/bench_bootstrap.py --analyze-rows 4096 --skip-scipy
"""
from __future__ import annotations

import argparse
import os
import statistics
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
    sc = np.bincount(idx, weights=c2.ravel(), minlength=m * bins).reshape(m, bins)
    sa = np.bincount(idx, weights=a2.ravel(), minlength=m * bins).reshape(m, bins)
    return (np.abs(sa - sc).sum(axis=1) / n).reshape(shape)


def write_synthetic_dump(path, rows, vocab, noise, seed, base_rows=None, block=512):
    """A synthetic dump through qfair's DumpWriter: one task, 4 choices x 8 tokens
    per example; the quantized dump is the base rows plus Gaussian noise."""
    from pathlib import Path

    from qfair.dump import DumpWriter

    path = Path(path)
    rng = np.random.default_rng(seed)
    per_ex, n_ch, n_tok = 32, 4, 8
    n_ex = rows // per_ex
    rows = n_ex * per_ex
    targets = np.random.default_rng(0).integers(0, vocab, rows)
    labels = np.random.default_rng(1).integers(0, n_ch, n_ex)
    ex_ids = [f"ex{e:06d}" for e in range(n_ex)]
    examples = {"example_id": ex_ids, "task": ["synthetic"] * n_ex, "doc_index": list(range(n_ex)),
                "group": [["a", "b", "c"][e % 3] for e in range(n_ex)], "label": labels.tolist(),
                "n_choices": [n_ch] * n_ex, "context": [""] * n_ex,
                "choices": [[f"choice {k}" for k in range(n_ch)]] * n_ex, "labels": [None] * n_ex,
                "extras": [None] * n_ex}
    w = DumpWriter(path, kind="multiple_choice", examples=examples, vocab_size=vocab,
                   tokenizer={"vocab_size": vocab, "vocab_sha256": "synthetic"},
                   tasks=[{"name": "synthetic", "kind": "multiple_choice"}], model={"id": path.name},
                   rows_per_example=[per_ex] * n_ex, shard_rows=block)
    base_iter = None if base_rows is None else iter(np.concatenate([np.asarray(b) for b in base_rows]))
    for e in range(n_ex):
        s0 = e * per_ex
        if base_iter is None:
            lg = rng.normal(0, 3.0, size=(per_ex, vocab)).astype(np.float32)
        else:
            base = np.stack([next(base_iter) for _ in range(per_ex)]).astype(np.float32)
            lg = base + rng.normal(0, noise, size=(per_ex, vocab)).astype(np.float32)
        lg -= lg.max(axis=1, keepdims=True)
        lp = lg - np.log(np.exp(lg).sum(axis=1, keepdims=True))
        y = targets[s0:s0 + per_ex]
        ly = lp[np.arange(per_ex), y]
        ll = ly.astype(np.float64).reshape(n_ch, n_tok).sum(axis=1)
        w.add({"choices": {"task": ["synthetic"] * n_ch, "example_id": [ex_ids[e]] * n_ch,
                           "doc_index": [e] * n_ch, "choice": list(range(n_ch)), "loglik": ll.tolist(),
                           "n_tokens": [n_tok] * n_ch, "n_chars": [8] * n_ch, "n_bytes": [8] * n_ch,
                           "is_greedy": [False] * n_ch, "first_row": list(range(s0, s0 + per_ex, n_tok)),
                           "n_rows": [n_tok] * n_ch},
               "tokens": {"row": list(range(s0, s0 + per_ex)), "task": ["synthetic"] * per_ex,
                          "example_id": [ex_ids[e]] * per_ex, "choice": np.repeat(np.arange(n_ch), n_tok).tolist(),
                          "pos": np.tile(np.arange(n_tok), n_ch).tolist(), "target": y.tolist(),
                          "logprob": ly.tolist(), "entropy": (-(np.exp(lp) * lp).sum(axis=1)).tolist(),
                          "max_logprob": lp.max(axis=1).tolist(), "argmax": lp.argmax(axis=1).tolist(),
                          "rank": (1 + (lp > ly[:, None]).sum(axis=1)).tolist()}}, lp)
    w.close()
    return path


def bench_analyze(rows: int, resamples: int, threads: int, chunk_rows: int = 1024) -> None:
    import shutil
    import tempfile
    from pathlib import Path

    vocab = 49_152
    root = Path(tempfile.mkdtemp(prefix="qfair-bench-"))
    try:
        t0 = time.perf_counter()
        base = write_synthetic_dump(root / "base", rows, vocab, 0.0, 1)
        blocks = [np.load(p, mmap_mode="r") for p in sorted((base / "logits").glob("*.npy"))]
        write_synthetic_dump(root / "quant", rows, vocab, 0.5, 2, base_rows=blocks)
        del blocks
        print(f"wrote two synthetic dumps of {rows} rows x {vocab} (f16) in {time.perf_counter() - t0:.1f} s")
        # the analysis runs in a fresh process so that its peak RSS is its own
        import subprocess
        import sys

        code = (
            "import time, qfair\n"
            f"t0 = time.perf_counter(); c = qfair.compare({str(root / 'base')!r}, {str(root / 'quant')!r}, "
            f"bootstrap={resamples}, threads={threads}, chunk_rows={chunk_rows}); dt = time.perf_counter() - t0\n"
            # VmHWM: this process's own peak (ru_maxrss would include the parent's, inherited over fork)
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
            "print(dt, c.tokens.height, c.examples.height, int(hwm) / 1024)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
        dt, n_rows, n_ex, rss = float(out[-4]), int(out[-3]), int(out[-2]), float(out[-1])
        print(f"qfair.compare: {dt:.2f} s for {n_rows} token rows ({n_rows / dt:,.0f} rows/s, "
              f"{n_rows * vocab / dt / 1e9:.2f} G row-element pairs/s end to end), "
              f"{n_ex} examples, B = {resamples}, threads = {threads}, chunk_rows = {chunk_rows}")
        print(f"peak RSS of the analysing process {rss:.0f} MiB; the two dumps' logits hold "
              f"{2 * rows * vocab * 2 / 2**20:.0f} MiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--bins", type=int, default=15)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--batch", type=int, default=250, help="scipy's batch (bounds its memory)")
    ap.add_argument("--skip-scipy", action="store_true")
    ap.add_argument("--repeats", type=int, default=7,
                    help="timed runs of qfair per ISA and thread count (a run is a tenth of a second: a median of 7 "
                         "rides out a shared machine's bursts)")
    ap.add_argument("--isa", nargs="+", default=None,
                    help="instruction sets to time (default: every one this CPU runs)")
    ap.add_argument("--analyze-rows", type=int, default=0,
                    help="also time qfair.compare end to end on synthetic dumps of this many rows")
    args = ap.parse_args()
    if args.analyze_rows:
        bench_analyze(args.analyze_rows, args.resamples, args.threads)
        return

    from qfair import stats
    from qfair._native import core

    n, B, bins = args.n, args.resamples, args.bins
    cx, x, cy, y = synthetic(n)
    specs = [stats.MeanDiff(y, x), stats.CalibrationDiff(cy, y, cx, x, bins=bins)]
    initial = core.active_isa()
    isas = [i for i in (args.isa or core.available_isas()) if core.select_isa(i) == i]
    print(f"n = {n} examples, B = {B} paired resamples, statistics: accuracy diff, ECE diff ({bins} bins); "
          f"ISAs {', '.join(isas)}; load average {os.getloadavg()[0]:.1f} on {len(os.sched_getaffinity(0))} CPUs")

    # Every (ISA, thread count) timed --repeats times, interleaved; medians.
    wall: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    outs = {}
    thread_counts = sorted({1, args.threads})
    for _ in range(args.repeats):
        for isa in isas:
            core.select_isa(isa)
            for t in thread_counts:
                t0, c0 = time.perf_counter(), time.process_time()
                outs[isa, t] = stats.paired_bootstrap(specs, resamples=B, seed=1, threads=t, keep_distribution=True)
                wall.setdefault((isa, t), []).append(time.perf_counter() - t0)
                cpu.setdefault((isa, t), []).append(time.process_time() - c0)
    core.select_isa(initial)
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    for (isa, t), w in med_wall.items():
        print(f"qfair {isa:<8} threads={t}: {w:.3f} s wall, {med_cpu[isa, t]:.3f} s CPU "
              f"(median of {args.repeats}; both statistics, percentile + BCa + p)")
    first = outs[isas[0], thread_counts[0]]
    same = all(np.array_equal(a.distribution, b.distribution) for o in outs.values() for a, b in zip(first, o))
    print(f"identical distributions across thread counts and ISAs: {same}")
    ours = first

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
          f"= {t_scipy:.2f} s wall, {cpu_scipy:.2f} s CPU (one run)")
    for isa in isas:
        best_t = min(thread_counts, key=lambda t: med_wall[isa, t])
        print(f"speed-up {isa:<8}: wall {t_scipy / med_wall[isa, best_t]:6.0f}x (qfair at threads={best_t}); "
              f"single-thread CPU time {cpu_scipy / med_cpu[isa, 1]:6.0f}x "
              f"(scipy {cpu_scipy:.2f} s vs qfair {med_cpu[isa, 1]:.3f} s)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {len(os.sched_getaffinity(0))} CPUs")
    for name, o, r in (("accuracy diff", ours[0], r_acc), ("ECE diff", ours[1], r_ece)):
        ci = r.confidence_interval
        print(f"{name:14s} estimate {o.estimate:+.5f}  qfair BCa [{o.bca_lo:+.5f}, {o.bca_hi:+.5f}]  "
              f"scipy BCa [{ci.low:+.5f}, {ci.high:+.5f}]  se {o.se:.5f} vs {r.standard_error:.5f}")


if __name__ == "__main__":
    main()
