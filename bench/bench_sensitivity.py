"""Scan time per unit against one full dump of the same probes, on the embedded model.

Runs, in one process and one after the other:
  1. a sensitivity scan over the first ``--units`` block units of the spec (the
     base scored once, then one scoring pass per unit), reporting the median
     seconds per unit;
  2. ``qfair.dump.run_dump`` of the same scan-side probes with the same
     quantized model (``--store full``: every scored token's float16 log-prob
     row written), timed from the loaded model to the closed dump.

The ratio (median per unit / one dump) says what a scan costs in "dumps". The
alternative a scan replaces — reloading the model with a skip list and dumping
once per unit — costs at least one dump plus one load per unit. Single runs on
a shared machine: load (uptime) is printed before and after.

    .venv/bin/python bench/bench_sensitivity.py [--quant bnb-nf4] [--units 4] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quant", default="bnb-nf4")
    ap.add_argument("--tasks", default="crows_pairs,arc_easy,piqa")
    ap.add_argument("--units", type=int, default=4, help="block units scanned (the first N)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from qfair.dump.multiple_choice import run_dump
    from qfair.sensitivity.probes import Split, build_probes, load_tasks
    from qfair.sensitivity.scan import load_pair, run_scan

    print("load before:", os.getloadavg())
    base, quant = load_pair(None, args.quant, progress=False)
    tasks = load_tasks(args.tasks)
    probes = build_probes(tasks, base.tokenizer, Split(), "scan")

    class _Only:  # the scan side as tasks for run_dump
        def __init__(self, t, ids):
            self.t, self.ids = t, ids
            self.name, self.kind, self.target_delimiter = t.name, t.kind, t.target_delimiter

        def docs(self):
            return iter([d for d in self.t.docs() if d.example_id in self.ids])

        def info(self):
            return self.t.info()

    ids = {d.example_id for d in probes.docs}
    tmp = tempfile.mkdtemp(prefix="qfair-bench-sens-")
    try:
        # the scan first: it reads the models' sizes, which must happen before any forward pass
        r = run_scan(os.path.join(tmp, "scan"), loaded=(base, quant), quant=args.quant, tasks=args.tasks,
                     progress=False, resamples=1000, only=[f"model.layers.{i}" for i in range(args.units)])
        t0 = time.perf_counter()
        run_dump(os.path.join(tmp, "dump"), quant, [_Only(t, ids) for t in tasks], store="full", progress=False)
        dump_s = time.perf_counter() - t0
        import polars as pl

        t = pl.read_parquet(os.path.join(tmp, "scan", "timing.parquet"))
        per = t.filter(pl.col("mode") == "single")["seconds"].to_list()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = statistics.median(per)
    print(f"probes: {len(probes)} examples, {probes.n_rows} scored tokens; spec {args.quant}; "
          f"{args.threads} torch thread(s)")
    print(f"one full dump (store full): {dump_s:.1f} s")
    print(f"scan: base {r.seconds['base']:.1f} s, per unit median {med:.1f} s over {len(per)} units "
          f"({', '.join(f'{x:.1f}' for x in per)})")
    print(f"ratio per unit / dump: {med / dump_s:.2f}")
    print("load after:", os.getloadavg())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
