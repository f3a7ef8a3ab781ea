"""Memory and time of ``qfair study``'s aggregation over many (base, quantized) pairs.

Runs a tiny real study once (a tiny Llama, bitsandbytes int8, two tasks) to get
one pair's analysis tables and dump manifests, then lays out a study of
``--models`` models x 2 specs with copies of them (each model its own size and
bits per weight), and times the aggregation alone (the cross-model table, the
figures and report.html) in a fresh process under ``/usr/bin/time -v``.

    nice -n 10 .venv/bin/python bench/bench_study_aggregate.py --models 10,100,500
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def seed_pair(root: Path) -> tuple[Path, Path, Path]:
    """(analysis dir, base dump, quant dump) of one real tiny pair."""
    from qfair.models.tiny import make_tiny_model
    from qfair.study import run_study

    model = make_tiny_model("llama", root / "tiny", seed=0)
    sf = root / "seed.toml"
    sf.write_text(textwrap.dedent(f"""\
        quant = ["bnb-int8"]
        tasks = ["piqa", "crows_pairs_english"]
        [[models]]
        id = "{model}"
        label = "seed"
        [dump]
        limit = 4
        threads = 1
        [analysis]
        bootstrap = 200
        report = false
        """))
    run_study(sf, root / "seed", log=lambda s: None)
    base = root / "seed" / "dumps" / "seed" / "tasks"
    return root / "seed" / "analyses" / "seed" / "tasks" / "bnb-int8", base / "none", base / "bnb-int8"


def layout(root: Path, n: int, analysis: Path, base: Path, quant: Path) -> Path:
    models = "\n".join(f'[[models]]\nid = "fake/model-{i}"\nlabel = "m{i:04d}"\nfamily = "f{i % 4}"\n'
                       f'size = {1e8 * (1 + i)}\n' for i in range(n))
    sf = root / f"study-{n}.toml"
    sf.write_text('quant = ["bnb-int8", "bnb-nf4"]\ntasks = ["piqa", "crows_pairs_english"]\n' + models)
    out = root / f"out-{n}"
    bm = json.loads((base / "manifest.json").read_text())
    qm = json.loads((quant / "manifest.json").read_text())
    for i in range(n):
        for spec, man in (("none", bm), ("bnb-int8", qm), ("bnb-nf4", qm)):
            d = out / "dumps" / f"m{i:04d}" / "tasks" / spec
            d.mkdir(parents=True, exist_ok=True)
            m = json.loads(json.dumps(man))
            m["model"]["size"]["bits_per_weight"] = {"none": 32.0, "bnb-int8": 8.5, "bnb-nf4": 4.6}[spec] + i * 1e-3
            (d / "manifest.json").write_text(json.dumps(m))
            if spec != "none":
                a = out / "analyses" / f"m{i:04d}" / "tasks" / spec
                a.mkdir(parents=True, exist_ok=True)
                for f in ("summary.parquet", "settings.json"):
                    shutil.copyfile(analysis / f, a / f)
    return sf


CODE = """
import sys
from qfair.study import load_study, make_plan
from qfair.study.aggregate import aggregate
plan = make_plan(load_study(sys.argv[1]), sys.argv[2])
r = aggregate(plan)
print("rows", r.table.height, "figures", len(r.figures))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="/tmp/qfair-agg-bench")
    ap.add_argument("--models", default="10,100,500")
    args = ap.parse_args(argv)
    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    print(f"# load before: {uptime()}")
    a, b, q = seed_pair(root)
    print("| models | pairs | result rows | wall | peak RSS |")
    print("|---|---|---|---|---|")
    for n in (int(x) for x in args.models.split(",")):
        sf = layout(root, n, a, b, q)
        p = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", CODE, str(sf), str(root / f"out-{n}")],
                           capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(p.stderr[-3000:])
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([0-9:.]+)", p.stderr).group(1)
        secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1)) / 1024
        rows = re.search(r"rows (\d+)", p.stdout).group(1)
        print(f"| {n} | {2 * n} | {int(rows):,} | {secs:.1f} s | {rss:.0f} MB |", flush=True)
    print(f"# load after: {uptime()}")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
