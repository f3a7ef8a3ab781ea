"""The study estimators and the shared draw's weighted sums: one checkout against another.

``qfair analyze`` resamples every summary statistic with one kept draw (uint16
multiplicities of ``bootstrap_counts(n, seed, b)``). This times, in separate
subprocesses alternating A B A B ..., each checkout's

- ``draw``: filling the kept draw of B resamples (``resampling._counts``);
- ``study``: the study's ACE / MCE over all B resamples for two models (the loop
  of ``summary._study_rows``, each checkout with its own way of reading the draw);
- ``rows``: ``summary._study_rows`` itself (the ratio rows' weighted sums, the
  study loop, quantiles and intervals);
- ``wsums``: ``weighted_sums`` of 8 columns (the ratio rows' shape);

on binary tasks of n = 4,000 and 1,333 examples and a four-choice task of 1,333,
with the kept draw warm for all but ``draw``. Each subprocess also saves its
outputs, and the run says whether the two checkouts agree bit for bit
(``np.array_equal``) or by how much they differ.

    nice -n 10 .venv/bin/python bench/bench_study_sums.py --old /work/main --new . --reps 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = [("binary", 4000, 2), ("binary", 1333, 2), ("four", 1333, 4)]


def synthetic(n: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, k))
    pb = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    lq = logits + rng.normal(0, 0.3, (n, k))
    pq = np.exp(lq) / np.exp(lq).sum(axis=1, keepdims=True)
    lab = rng.integers(0, k, n)
    return pb, pq, lab


def worker(root: str, out: str, resamples: int) -> None:
    sys.path.insert(0, root)
    import glob
    import inspect

    import qfair

    if not glob.glob(os.path.join(root, "qfair", "_core*.so")):  # a checkout whose extension stays in its build dir
        qfair.__path__.append(os.path.dirname(sorted(glob.glob(os.path.join(root, "build", "*", "_core*.so")))[0]))

    import polars as pl

    from qfair.analyze import summary
    from qfair.analyze.study import study_calibration
    from qfair.metrics import resampling as R

    raw = "raw" in inspect.signature(R.count_blocks).parameters
    times: dict[str, float] = {}
    saved: dict[str, np.ndarray] = {}
    print(f"{root}: qfair {qfair.__file__}, core {R.stats.core.__file__}", file=sys.stderr)
    for name, n, k in SHAPES:
        tag = f"{name}{n}"
        pb, pq, lab = synthetic(n, k, n + k)
        R.clear_draw_cache()
        t = time.perf_counter()
        R._counts(n, 0, resamples)
        times[f"draw/{tag}"] = time.perf_counter() - t

        kw = {"ranges": 15, "binary_bins": 100, "bins": 100}
        width = n * (24 if k > 2 else (1 if raw else 4))
        t = time.perf_counter()
        dists: dict[str, list[np.ndarray]] = {}
        for c in (R.count_blocks(n, 0, resamples, width=width, raw=True) if raw
                  else R.count_blocks(n, 0, resamples, width=width)):
            for pfx, m in (("b", pb), ("q", pq)):
                for key, v in study_calibration(m, lab, c, **kw).items():
                    dists.setdefault(f"{pfx}_{key}", []).append(v)
        times[f"study/{tag}"] = time.perf_counter() - t
        for key, parts in dists.items():
            saved[f"study/{tag}/{key}"] = np.concatenate(parts)

        conf_b, conf_q = pb.max(axis=1), pq.max(axis=1)
        cor_b = (pb.argmax(axis=1) == lab).astype(float)
        cor_q = (pq.argmax(axis=1) == lab).astype(float)
        cols = np.column_stack([conf_b * cor_b, cor_b, conf_q * cor_q, cor_q, conf_b * (1 - cor_b), 1 - cor_b,
                                conf_q * (1 - cor_q), 1 - cor_q])
        R._memo.clear()
        t = time.perf_counter()
        saved[f"wsums/{tag}"] = R.weighted_sums(cols, seed=0, resamples=resamples)
        times[f"wsums/{tag}"] = time.perf_counter() - t

        j = pl.DataFrame({"base_conf": conf_b, "quant_conf": conf_q, "base_correct": cor_b, "quant_correct": cor_q,
                          "base_probs": pb.tolist(), "quant_probs": pq.tolist(), "label": lab,
                          "n_choices": np.full(n, k)})
        R._memo.clear()
        t = time.perf_counter()
        rows = summary._study_rows(j, summary.StatsConfig(resamples=resamples))
        times[f"rows/{tag}"] = time.perf_counter() - t
        for r in rows:
            saved[f"rows/{tag}/{r['metric']}"] = np.array([np.nan if r[f] is None else r[f] for f in
                                                           ("diff", "pct_low", "pct_high", "p", "base_low",
                                                            "base_high", "quant_low", "quant_high")], dtype=float)
    np.savez(out, **{k.replace("/", "|"): v for k, v in saved.items()})
    Path(out + ".json").write_text(json.dumps(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", default="/work/main")
    ap.add_argument("--new", default=".")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--worker", nargs=2, metavar=("ROOT", "OUT"))
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], a.worker[1], a.resamples)
        return
    roots = {"old": str(Path(a.old).resolve()), "new": str(Path(a.new).resolve())}
    times: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    outs: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.reps):
            for side in ("old", "new"):
                out = os.path.join(tmp, f"{side}{rep}.npz")
                subprocess.run([sys.executable, __file__, "--resamples", str(a.resamples), "--worker",
                                roots[side], out], check=True, cwd=tmp)
                for key, v in json.loads(Path(out + ".json").read_text()).items():
                    times[side].setdefault(key, []).append(v)
                outs[side] = out
        old, new = np.load(outs["old"]), np.load(outs["new"])
        same = [k for k in old.files if np.array_equal(old[k], new[k], equal_nan=True)]
        differ = [k for k in old.files if k not in same]
        print(f"outputs: {len(same)} of {len(old.files)} bit-identical")
        for k in differ:
            d = np.nanmax(np.abs(old[k] - new[k]))
            rel = d / max(np.nanmax(np.abs(old[k])), 1e-300)
            print(f"  differs: {k.replace('|', '/')}: max |old - new| = {d:.3g} (relative {rel:.3g})")
    print(f"load average: {os.getloadavg()}")
    print(f"{'step':<18}{'old s':>10}{'new s':>10}{'old/new':>9}   (medians of {a.reps}, B = {a.resamples})")
    for key in times["old"]:
        mo, mn = statistics.median(times["old"][key]), statistics.median(times["new"][key])
        print(f"{key:<18}{mo:>10.3f}{mn:>10.3f}{mo / mn:>9.2f}")


if __name__ == "__main__":
    main()
