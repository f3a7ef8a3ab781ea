"""A data-parallel dump (torchrun, 2 processes x 1 thread) against one process on the same CPU work.

Dumps the embedded model (SmolLM2-135M, full precision) on four task samples,
alternating, ``--repeats`` times each:

- ``1 proc x 2 threads``: ``qfair dump --threads 2`` (what one process does with the machine);
- ``2 procs x 1 thread``: ``torchrun --nproc-per-node 2 -m qfair dump --threads 1``;
- ``1 proc x 1 thread``: ``qfair dump --threads 1`` (the single-process twin of one rank, whose
  dump the 2-process one must equal byte for byte).

Each command is timed whole (process start, model load on every rank, the dump,
rank 0's merge) under ``/usr/bin/time -v``: wall seconds and CPU seconds. Prints
medians and the wall ratio, and whether the 2-process dump equals the 1 x 1 one
file for file. ``uptime`` before and after (a shared machine's load moves wall
times a lot; CPU seconds show the work done).

    nice -n 10 .venv/bin/python bench/bench_distributed.py --limit 20 --repeats 2
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def timed(cmd: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")

    def field(name: str) -> float:
        m = re.search(rf"{re.escape(name)}: ([0-9.:]+)", p.stderr)
        assert m, name
        v = m.group(1)
        if ":" in v:  # h:mm:ss or m:ss.cc
            parts = [float(x) for x in v.split(":")]
            return sum(x * 60 ** i for i, x in enumerate(reversed(parts)))
        return float(v)

    return {"wall": field("Elapsed (wall clock) time (h:mm:ss or m:ss)"),
            "cpu": field("User time (seconds)") + field("System time (seconds)")}


def files(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/qfair-dp-bench")
    ap.add_argument("--tasks", default="piqa,arc_easy,hellaswag,boolq")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--shard-rows", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    common = ["-m", "qfair", "dump", "--tasks", args.tasks, "--limit", str(args.limit), "--shard-rows",
              str(args.shard_rows), "--no-progress"]
    configs = {
        "1 proc x 2 threads": [sys.executable, *common, "--threads", "2"],
        "2 procs x 1 thread": [str(BIN / "torchrun"), "--nproc-per-node", "2", *common, "--threads", "1"],
        "1 proc x 1 thread": [sys.executable, *common, "--threads", "1"],
    }
    print(f"# load before: {uptime()}")
    res: dict[str, list[dict]] = {k: [] for k in configs}
    for r in range(args.repeats):
        for name, cmd in configs.items():
            d = out / f"{name.replace(' ', '')}-{r}"
            t = timed([*cmd, "--out", str(d)])
            res[name].append(t)
            print(f"{name} run {r}: wall {t['wall']:.1f} s, cpu {t['cpu']:.1f} s", flush=True)
    print(f"# load after: {uptime()}")
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("wall", "cpu")} for k, v in res.items()}
    base = med["1 proc x 2 threads"]["wall"]
    print("\n| setting | wall (median) | CPU time (median) | wall vs 1 proc x 2 threads |")
    print("|---|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v['wall']:.1f} s | {v['cpu']:.1f} s | {v['wall'] / base:.2f}x |")
    same = files(out / "2procsx1thread-0") == files(out / "1procx1thread-0")
    print(f"\n2-process dump == 1 x 1 thread dump, file for file: {same}")
    shutil.rmtree(out, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
