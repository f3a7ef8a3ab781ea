"""GPTQ with generic against bias-balanced calibration, on the held-out probes.

Both calibration sets draw from the scan side of the probe split only; the
comparison runs on the held-out side: each spec against the base (bias
metrics per bias type, KL, accuracy) and bias-balanced minus generic, paired
per example, with bootstrap intervals. The first run quantizes (minutes; then
cached).

    .venv/bin/python bench/bench_calibration_bias.py [--bits 4] [--group-size 64] [--samples 64]
"""
from __future__ import annotations

import argparse
import os
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--tasks", default="crows_pairs,arc_easy,piqa")
    ap.add_argument("--extra", default="", help="more specs to compare, comma-separated")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import polars as pl
    import torch

    torch.set_num_threads(args.threads)
    from qfair.sensitivity.compare import compare_specs

    common = f"bits={args.bits},group_size={args.group_size},samples={args.samples}"
    specs = [f"gptq:{common}", f"gptq:{common},calib=bias-balanced"] + [s for s in args.extra.split(",") if s]
    print("load before:", os.getloadavg())
    t0 = time.perf_counter()
    table, n = compare_specs(specs, tasks=args.tasks, progress=False)
    print(f"{n} held-out examples; {time.perf_counter() - t0:.0f} s")
    pl.Config.set_tbl_rows(200)
    pl.Config.set_tbl_cols(12)
    pl.Config.set_tbl_width_chars(200)
    pl.Config.set_fmt_str_lengths(60)
    show = table.filter(pl.col("group").is_null()).select(["spec", "comparison", "set", "metric", "n", "base", "value",
                                                          "delta", "ci_low", "ci_high", "p"])
    print(show)
    print("load after:", os.getloadavg())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
