"""Dump throughput under CPU contention: how much slower ``qfair dump`` gets
while another CPU-heavy process runs, per torch thread setting.

Each configuration runs in its own process (the model is loaded first and
excluded from the timing), scoring the same documents of the embedded
SmolLM2-135M; configurations are interleaved and repeated, medians reported.
A "hog" is a ``python -c 'while True: pass'`` process running during the
measured dump. Compared:

- ``before``: torch's own thread count and OpenMP's default waiting (spin,
  then sleep): what a dump did before;
- ``after``: qfair's defaults: the CPUs in the affinity mask, and
  ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at barriers instead of spinning;
  set by ``import qfair`` unless the user set it);
- ``affinity+spin``: the thread default alone, OpenMP's default waiting;
- ``1 thread``.

The slowdown of each configuration (quiet rows/s over rows/s with the hog) is
set against the share of the CPU it can get: with T threads, h hogs and C
CPUs, min(T, C·T/(T+h)) CPUs instead of min(T, C), i.e. an expected slowdown
of max(1, (T+h)/C) for T <= C. The machine's load average is recorded before
and after: other work on a shared machine is contention too.

    .venv/bin/python bench/bench_load.py --limit 12 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKER = r"""
import json, os, sys, tempfile, time
threads, limit, qfair_first = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
if qfair_first:
    import qfair  # noqa: F401 - qfair's environment defaults, as the CLI applies them
policy = os.environ.get("OMP_WAIT_POLICY")  # what OpenMP reads when torch loads it
import torch
default_threads = torch.get_num_threads()
from qfair.dump.run import run_dump
from qfair.models import load_model
import qfair.tasks as T
n = {"torch": default_threads, "affinity": len(os.sched_getaffinity(0))}.get(threads, threads)
loaded = load_model(None, progress=False)
tasks = [T.get("piqa", limit=limit), T.get("arc_easy", limit=limit)]
with tempfile.TemporaryDirectory() as d:
    run_dump(d + "/warm", loaded, [T.get("piqa", limit=2)], store="full", progress=False, threads=n)
    print("ready", flush=True)
    sys.stdin.readline()  # the driver starts the hog, then says go
    t = time.perf_counter()
    s = run_dump(d + "/d", loaded, tasks, store="full", progress=False, threads=n)
    dt = time.perf_counter() - t
print(json.dumps({"rows": s.n_rows, "seconds": dt, "threads": n, "torch_default": default_threads,
                  "omp_wait_policy": policy}), flush=True)
"""

# name -> (threads, extra environment, import qfair before torch)
CONFIGS = {
    "before": ("torch", {}, False),             # torch's thread count, OpenMP's default waiting
    "after": ("affinity", {}, True),            # qfair's defaults: affinity threads, passive waiting
    "affinity+spin": ("affinity", {}, False),   # the thread default alone
    "1 thread": (1, {}, False),
}


def one_run(config: str, hogs: int, limit: int) -> dict:
    threads, env_extra, qfair_first = CONFIGS[config]
    env = {**os.environ, **env_extra}
    for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"):  # let each configuration choose
        env.pop(k, None)
    p = subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(threads), str(limit), str(int(qfair_first))],
                         stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert p.stdout.readline().strip() == "ready"
    hog_procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
    try:
        time.sleep(0.5 if hogs else 0)
        p.stdin.write("go\n")
        p.stdin.flush()
        out = json.loads(p.stdout.readline())
    finally:
        for h in hog_procs:
            h.kill()
            h.wait()
    p.wait(timeout=60)
    out["rows_per_s"] = out["rows"] / out["seconds"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=12, help="documents per task (piqa, arc_easy)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hogs", type=int, default=1)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_load.json"))
    args = ap.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    runs: dict[str, dict[int, list[dict]]] = {c: {0: [], args.hogs: []} for c in configs}
    load_before = os.getloadavg()
    for r in range(args.repeats):
        for c in configs:
            for h in (0, args.hogs):
                res = one_run(c, h, args.limit)
                res["load1"] = os.getloadavg()[0]
                runs[c][h].append(res)
                print(f"repeat {r} {c!r} hogs={h}: {res['rows_per_s']:.1f} rows/s ({res['threads']} threads, "
                      f"load {res['load1']:.1f})", file=sys.stderr, flush=True)
    cpus = len(os.sched_getaffinity(0))
    summary = {}
    for c in configs:
        quiet = statistics.median(x["rows_per_s"] for x in runs[c][0])
        busy = statistics.median(x["rows_per_s"] for x in runs[c][args.hogs])
        t = runs[c][0][0]["threads"]
        summary[c] = {"threads": t, "rows_per_s_quiet": round(quiet, 1), "rows_per_s_hog": round(busy, 1),
                      "slowdown": round(quiet / busy, 2),
                      "fair_share_slowdown": round(max(1.0, (t + args.hogs) / cpus) if t <= cpus else
                                                   (t + args.hogs) / cpus, 2)}
    res = {"cpus": cpus, "hogs": args.hogs, "limit": args.limit, "repeats": args.repeats,
           "torch_default_threads": runs[configs[0]][0][0]["torch_default"], "load_before": load_before,
           "load_after": os.getloadavg(), "summary": summary, "runs": runs}
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
