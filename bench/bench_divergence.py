"""Benchmark: the divergence suite in qfair's C++ core vs the same suite in
torch (CPU, same thread count) and numpy, on the same aligned float16 rows.

    python bench/bench_divergence.py [--rows 2048] [--vocab 49152 128256] [--threads 2] [--repeats 3] [--data zipf]
                                     [--isa avx512 avx2 baseline] [--metrics kl_pq ...] [--skip-numpy]
                                     [--skip-torch] [--json out.json]

For every instruction set this CPU runs (AVX-512, AVX2, the portable
baseline; --isa to choose) prints the core's median wall time over all rows,
(row-element pairs)/s and the ratios torch / qfair and numpy / qfair; the
variants are interleaved within each repeat. --metrics times the core on that
subset of the columns (qfair.divergence(metrics=...); `--metrics analyze` is
the set `qfair analyze` asks for) next to the full suite.

The memory-bound ceiling is measured in the same run: core.read_rows reads
every byte of both arrays once on the same threads (a pure read; no one-pass
kernel over these rows can be faster), and every qfair figure is also given as
a fraction of it. The rows (2 x rows x vocab x 2 bytes) are far larger than
the cache at the default sizes, so both figures are streamed from memory.

Timing is noisy on shared machines: quote medians and ratios, and the load
average printed with them. The CPU time of each variant is printed too: pairs
per CPU-second does not drop when other processes take turns on the cores.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

import qfair
from qfair._native import core

TOPK = (1, 5, 10)


def make_rows(rows: int, vocab: int, seed: int = 0, data: str = "normal") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Base log-probs with an LLM-like spread, and a 'quantized' perturbation.

    ``normal``: Gaussian logits (sd 2.5, fifty likely tokens) moved by N(0, 0.15):
    almost every entry moves by less than 0.5 nats. ``zipf``: the rows of
    bench_big_analysis, log-softmax of a Zipf-like profile (-1.5 log rank, in a
    random order, plus N(0, 0.5)) moved by N(0, 0.3): a tenth of the entries move
    by more than 0.5 nats, as in a 4-bit model's tail."""
    rng = np.random.default_rng(seed)
    if data == "zipf":
        from bench_big_analysis import pools  # the same rows, one of each

        base, quant = pools(vocab, rows, seed)
        return base.astype(np.float16), quant.astype(np.float16), rng.integers(0, vocab, rows)
    p = np.empty((rows, vocab), np.float16)
    q = np.empty((rows, vocab), np.float16)
    for s in range(0, rows, 256):
        e = min(rows, s + 256)
        logits = rng.standard_normal((e - s, vocab), dtype=np.float32) * 2.5
        logits[:, :50] += 6.0  # a few likely tokens
        p[s:e] = logits
        q[s:e] = logits + rng.standard_normal((e - s, vocab), dtype=np.float32) * 0.15
    targets = rng.integers(0, vocab, rows)
    return p, q, targets


def torch_suite(p16, q16, targets, chunk=128):
    import torch

    out = []
    for s in range(0, p16.shape[0], chunk):
        a = torch.from_numpy(p16[s : s + chunk]).float()
        b = torch.from_numpy(q16[s : s + chunk]).float()
        t = torch.from_numpy(targets[s : s + chunk])
        lp, lq = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
        p, q = lp.exp(), lq.exp()
        kl_pq = torch.nn.functional.kl_div(lq, lp, log_target=True, reduction="none").sum(-1)
        kl_qp = torch.nn.functional.kl_div(lp, lq, log_target=True, reduction="none").sum(-1)
        lm = torch.log(0.5 * (p + q))
        js = 0.5 * ((p * (lp - lm)).sum(-1) + (q * (lq - lm)).sum(-1))
        tv = 0.5 * (p - q).abs().sum(-1)
        hp, hq = -(p * lp).sum(-1), -(q * lq).sum(-1)
        top_p, ids_p = lp.topk(max(TOPK), -1)
        top_q, ids_q = lq.topk(max(TOPK), -1)
        maxp, margin_p = top_p[:, 0].exp(), top_p[:, 0].exp() - top_p[:, 1].exp()
        maxq, margin_q = top_q[:, 0].exp(), top_q[:, 0].exp() - top_q[:, 1].exp()
        agree = ids_p[:, 0] == ids_q[:, 0]
        overlaps = [
            (ids_p[:, :k, None] == ids_q[:, None, :k]).any(-1).float().mean(-1) for k in TOPK
        ]
        tp, tq = lp.gather(1, t[:, None])[:, 0], lq.gather(1, t[:, None])[:, 0]
        rank_p = 1 + (lp > tp[:, None]).sum(-1)
        rank_q = 1 + (lq > tq[:, None]).sum(-1)
        out.append((kl_pq, kl_qp, js, tv, hp, hq, maxp, maxq, margin_p, margin_q, agree, overlaps, rank_p, rank_q))
    return out


def numpy_suite(p16, q16, targets, chunk=128):
    out = []
    for s in range(0, p16.shape[0], chunk):
        a = p16[s : s + chunk].astype(np.float32)
        b = q16[s : s + chunk].astype(np.float32)
        t = targets[s : s + chunk]
        lp = a - a.max(-1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
        lq = b - b.max(-1, keepdims=True)
        lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
        p, q = np.exp(lp), np.exp(lq)
        kl_pq = (p * (lp - lq)).sum(-1)
        kl_qp = (q * (lq - lp)).sum(-1)
        lm = np.log(0.5 * (p + q))
        js = 0.5 * ((p * (lp - lm)).sum(-1) + (q * (lq - lm)).sum(-1))
        tv = 0.5 * np.abs(p - q).sum(-1)
        hp, hq = -(p * lp).sum(-1), -(q * lq).sum(-1)
        k = max(TOPK)
        idx_p = np.argpartition(-lp, k, axis=-1)[:, :k]
        idx_q = np.argpartition(-lq, k, axis=-1)[:, :k]
        r = np.arange(a.shape[0])[:, None]
        ids_p = np.take_along_axis(idx_p, np.argsort(-lp[r, idx_p], -1, kind="stable"), -1)
        ids_q = np.take_along_axis(idx_q, np.argsort(-lq[r, idx_q], -1, kind="stable"), -1)
        overlaps = [(ids_p[:, :kk, None] == ids_q[:, None, :kk]).any(-1).mean(-1) for kk in TOPK]
        rr = np.arange(a.shape[0])
        rank_p = 1 + (lp > lp[rr, t][:, None]).sum(-1)
        rank_q = 1 + (lq > lq[rr, t][:, None]).sum(-1)
        out.append((kl_pq, kl_qp, js, tv, hp, hq, overlaps, rank_p, rank_q))
    return out


def median_times(variants: dict, repeats: int, cpu: dict[str, float] | None = None) -> dict[str, float]:
    """Median wall time of each variant, the variants interleaved within every
    repeat so that a change in the machine's load hits them alike (the median
    CPU time of each into `cpu`, when given)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            c0 = time.process_time()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpus[name].append(time.process_time() - c0)
            if name in ("torch", "numpy"):
                # torch's thread pool keeps the CPUs busy for a moment after it returns: the
                # variant timed next ran 2x slower in one run out of two without this pause
                time.sleep(0.5)
    if cpu is not None:
        cpu.update({name: statistics.median(v) for name, v in cpus.items()})
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--vocab", type=int, nargs="+", default=[49152, 128256])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--isa", nargs="+", default=None,
                    help="instruction sets to time (default: every one this CPU runs: avx512, avx2, baseline)")
    ap.add_argument("--metrics", nargs="+", default=None,
                    help="also time the core on this subset of columns ('analyze': the set qfair analyze reads)")
    ap.add_argument("--data", choices=("normal", "zipf"), default="normal",
                    help="the rows: 'normal' (small moves, the short series' case) or 'zipf' (bench_big_analysis's "
                         "rows: a tenth of the entries move by more than 0.5 nats)")
    ap.add_argument("--skip-numpy", action="store_true")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    import torch

    from qfair.analyze.tokens import VOCAB_METRICS

    subset = None
    if args.metrics:
        subset = tuple(VOCAB_METRICS) if args.metrics == ["analyze"] else tuple(args.metrics)
    torch.set_num_threads(args.threads)
    initial = core.active_isa()
    isas = [i for i in (args.isa or core.available_isas()) if core.select_isa(i) == i]
    core.select_isa(initial)
    results = []
    print(f"data={args.data} threads={args.threads} rows={args.rows} isas={','.join(isas)} (default {initial}) torch={torch.__version__} "
          f"load average {os.getloadavg()[0]:.1f} on {len(os.sched_getaffinity(0))} CPUs")
    for vocab in args.vocab:
        p, q, t = make_rows(args.rows, vocab, data=args.data)
        pairs = args.rows * vocab
        # warm up (torch initialises its kernels on the first call)
        qfair.divergence(p[:64], q[:64], targets=t[:64], threads=args.threads)
        if not args.skip_torch:
            torch_suite(p[:64], q[:64], t[:64])

        def run_isa(isa, metrics=None):
            def fn():
                core.select_isa(isa)
                qfair.divergence(p, q, targets=t, topk=TOPK, threads=args.threads, metrics=metrics)
            return fn

        def read_both():
            core.read_rows(p, args.threads)
            core.read_rows(q, args.threads)

        variants = {"read": read_both}
        for isa in isas:
            variants[f"qfair-{isa}"] = run_isa(isa)
            if subset is not None:
                variants[f"qfair-{isa}-subset"] = run_isa(isa, subset)
        if not args.skip_torch:
            variants["torch"] = lambda: torch_suite(p, q, t)
        if not args.skip_numpy:
            variants["numpy"] = lambda: numpy_suite(p, q, t)
        load0 = os.getloadavg()[0]
        cpu: dict[str, float] = {}
        med = median_times(variants, args.repeats, cpu)
        core.select_isa(initial)
        t_torch = med.get("torch", float("nan"))
        t_numpy = med.get("numpy", float("nan"))
        t_read = med["read"]
        row = {
            "vocab": vocab,
            "rows": args.rows,
            "threads": args.threads,
            "load_average": [load0, os.getloadavg()[0]],
            "torch_s": t_torch,
            "numpy_s": t_numpy,
            "torch_Gpairs_per_s": pairs / t_torch / 1e9,
            "read_s": t_read,
            "read_Gpairs_per_s": pairs / t_read / 1e9,
            "metrics_subset": list(subset) if subset else None,
            "isa": {},
        }
        for isa in isas:
            for key, label in ((f"qfair-{isa}", isa), (f"qfair-{isa}-subset", f"{isa}-subset")):
                if key not in med:
                    continue
                row["isa"][label] = {
                    "qfair_s": med[key],
                    "cpu_s": cpu[key],
                    "Gpairs_per_s": pairs / med[key] / 1e9,
                    "Gpairs_per_cpu_s": pairs / cpu[key] / 1e9,
                    "of_read_ceiling": t_read / med[key],
                    "torch_over_qfair": t_torch / med[key],
                    "numpy_over_qfair": t_numpy / med[key],
                }
        results.append(row)
        print(f"vocab={vocab:>6}: "
              + ("" if args.skip_torch else f"torch {t_torch:7.3f} s ({row['torch_Gpairs_per_s']:.3f} G pairs/s), ")
              + ("" if args.skip_numpy else f"numpy {t_numpy:7.3f} s, ")
              + f"memory-bound ceiling (pure read of both arrays) {row['read_Gpairs_per_s']:.2f} G pairs/s"
              + f"; load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
        if subset:
            print(f"   (-subset: metrics={','.join(subset)})")
        for isa, r in row["isa"].items():
            print(f"   qfair {isa:<15} {r['qfair_s']:7.3f} s  {r['Gpairs_per_s']:6.2f} G pairs/s "
                  f"({r['Gpairs_per_cpu_s']:5.2f} per CPU-s, {r['of_read_ceiling']:4.0%} of the ceiling)"
                  + ("" if args.skip_torch else f"  torch/qfair {r['torch_over_qfair']:5.1f}x")
                  + ("" if args.skip_numpy else f"  numpy/qfair {r['numpy_over_qfair']:5.1f}x"))
        del p, q
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
