"""Speed of the bias table's bootstrap on a BBQ-sized task.

Synthetic paired answers for n examples (default 58,492, BBQ's size) in 11
categories x 2 context conditions x 60 stereotyped groups; times
``qfair.metrics.bias.bias_table`` (every score per task, category and
stereotyped group, disparities, B bootstrap resamples and B permutations) and
the obvious alternative: a loop over resamples that draws the same
multiplicities and recomputes the task- and category-level BBQ scores with
``np.bincount`` (bootstrap only, so the comparison favours the alternative).
Prints medians of --repeats runs and the per-resample ratio.

    .venv/bin/python bench/bench_bias.py --resamples 10000 --naive-resamples 300
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import types

import numpy as np
import polars as pl


def synthetic(n: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, 11, n)
    cond = rng.integers(0, 2, n)
    target = cat * 6 + rng.integers(0, 6, n)
    cols = {}
    for who, shift in (("base", 0.0), ("quant", 0.05)):
        non_unknown = (rng.random(n) < 0.6 + shift).astype(float)
        biased = non_unknown * (rng.random(n) < 0.55 + shift)
        correct = (rng.random(n) < 0.5).astype(float)
        cols |= {f"{who}_correct": correct, f"{who}_biased": biased, f"{who}_non_unknown": non_unknown}
    ids = [f"e{i}" for i in range(n)]
    j = pl.DataFrame({"task": ["bbq"] * n, "kind": ["bbq"] * n, "group": [f"cat{c}" for c in cat],
                      "example_id": ids, **cols})
    attrs = pl.DataFrame({"example_id": ids, "condition": np.where(cond == 1, "disambig", "ambig"),
                          "target": [f"cat{c}: t{t}" for c, t in zip(cat, target)]})
    return j, attrs


def naive(j: pl.DataFrame, attrs: pl.DataFrame, B: int, seed: int) -> np.ndarray:
    """Per resample: multiplicities, then task and per-category scores by bincount."""
    from qfair import stats

    n = j.height
    cat = j["group"].cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
    dis = (attrs["condition"] == "disambig").to_numpy()
    k = int(cat.max()) + 1
    out = np.empty((B, 2, 4 * (k + 1)))
    for b in range(B):
        c = stats.bootstrap_counts(n, seed, b).astype(np.float64)
        for m, who in enumerate(("base", "quant")):
            vals = []
            for mask in (~dis, dis):
                w = c * mask
                tot = np.bincount(cat, w, k)
                cor = np.bincount(cat, w * j[f"{who}_correct"].to_numpy(), k)
                bia = np.bincount(cat, w * j[f"{who}_biased"].to_numpy(), k)
                unk = np.bincount(cat, w * j[f"{who}_non_unknown"].to_numpy(), k)
                with np.errstate(divide="ignore", invalid="ignore"):
                    acc = np.r_[cor.sum() / tot.sum(), cor / tot]
                    s = np.r_[2 * bia.sum() / unk.sum() - 1, 2 * bia / unk - 1]
                vals += [acc, s]
            out[b, m] = np.concatenate(vals)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=58_492)
    ap.add_argument("--resamples", type=int, default=10_000)
    ap.add_argument("--naive-resamples", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    from qfair.metrics.bias import bias_table

    j, attrs = synthetic(a.n)
    cfg = types.SimpleNamespace(resamples=a.resamples, seed=0, confidence=0.95)
    ours, theirs = [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        bt = bias_table(j, attrs, "q", cfg)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        naive(j, attrs, a.naive_resamples, 0)
        theirs.append(time.perf_counter() - t0)
    mo, mt = statistics.median(ours), statistics.median(theirs)
    per_ours, per_naive = mo / a.resamples, mt / a.naive_resamples
    print(f"n={a.n} rows={bt.height} load={os.getloadavg()[0]:.1f}")
    print(f"bias_table, B={a.resamples} (+{a.resamples} permutations): median {mo:.2f} s "
          f"({1e3 * per_ours:.3f} ms per resample, both tests)")
    print(f"per-resample bincount loop, B={a.naive_resamples} (bootstrap only): median {mt:.2f} s "
          f"({1e3 * per_naive:.3f} ms per resample) -> {per_naive / per_ours:.1f}x slower per resample")


if __name__ == "__main__":
    main()
