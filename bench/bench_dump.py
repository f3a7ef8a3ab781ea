"""Wall time of ``qfair dump`` on the embedded SmolLM2-135M (CPU), as ratios in one run:

1. ``--store full`` versus lm-evaluation-harness scoring the same documents with
   the same model and thread count (target: qfair faster, although it also
   writes every vocabulary-wide distribution);
2. ``--store full`` versus ``--store none`` (target: writing costs <= 10 %).

Model loading is excluded from every timing (the model is loaded once and
shared); lm-eval's time includes building its tasks from the local JSONL, as
qfair's includes tokenising and writing. Runs are interleaved and repeated;
the minimum of each is reported (the machine is shared, minima are the least
noisy estimate). lm-eval is optional (``pip install lm-eval``): without it only
(2) is measured.

    .venv/bin/python bench/bench_dump.py --repeats 2 --threads 1

On a shared 2-core box prefer --threads 1: OpenMP threads that spin against
other processes make every framework several times slower and the ratios noisy.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

DEFAULT_TASKS = "piqa,arc_easy,hellaswag,truthfulqa_mc2"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=DEFAULT_TASKS)
    ap.add_argument("--limit", type=int, default=None, help="documents per task (default: whole built-in sample)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--lmeval-batch-sizes", default="1,8")
    ap.add_argument("--out", default="bench/results/bench_dump.json")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from lmeval_parity import make_lm, run_lmeval, run_qfair

    from qfair.models import load_model

    try:
        import lm_eval  # noqa: F401

        have_lmeval = True
    except ImportError:
        have_lmeval = False

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    loaded = load_model(progress=False)
    lms = {}
    if have_lmeval:
        for bs in [int(b) for b in args.lmeval_batch_sizes.split(",") if b]:
            lms[bs] = make_lm(loaded.checkpoint_path, bs)

    times: dict[str, list[float]] = {"qfair_full": [], "qfair_none": []}
    for bs in lms:
        times[f"lm_eval_bs{bs}"] = []
    rows = tokens = None
    with tempfile.TemporaryDirectory(prefix="qfair-bench-") as tmp:
        tmp = Path(tmp)
        for r in range(args.repeats):
            for store in ("none", "full"):
                d, dt = run_qfair(loaded, tasks, args.limit, tmp / f"dump_{store}", store=store)
                times[f"qfair_{store}"].append(dt)
                print(f"repeat {r + 1}: qfair --store {store} {dt:.1f} s", file=sys.stderr, flush=True)
                if store == "full":
                    rows, tokens = d.n_rows, d.tokens.height
                    shard_bytes = sum(p.stat().st_size for p in d.logit_paths)
            for bs, lm in lms.items():
                ydir = tmp / f"yaml_{r}_{bs}"
                ydir.mkdir()
                _, dt = run_lmeval(lm, tasks, args.limit, ydir)
                times[f"lm_eval_bs{bs}"].append(dt)
                print(f"repeat {r + 1}: lm-eval batch {bs} {dt:.1f} s", file=sys.stderr, flush=True)
            print(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()),
                  file=sys.stderr)

    best = {k: min(v) for k, v in times.items()}
    result = {
        "tasks": tasks, "limit": args.limit, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
        "rows_stored": rows, "tokens_scored": tokens, "logits_bytes": shard_bytes,
        "seconds_min": best, "seconds_all": times,
        "store_full_over_none": best["qfair_full"] / best["qfair_none"],
        "rows_per_s_full": rows / best["qfair_full"],
    }
    for k in best:
        if k.startswith("lm_eval"):
            result[f"{k}_over_qfair_full"] = best[k] / best["qfair_full"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(f"qfair dump --store full: {best['qfair_full']:.1f} s for {rows} rows ({rows / best['qfair_full']:.0f} rows/s, "
          f"{shard_bytes / 2**20:.0f} MiB of f16 log-probs); --store none: {best['qfair_none']:.1f} s "
          f"(full costs {100 * (result['store_full_over_none'] - 1):+.1f} %)")
    for k in best:
        if k.startswith("lm_eval"):
            print(f"{k}: {best[k]:.1f} s = {result[k + '_over_qfair_full']:.2f}x qfair dump --store full")
    return 0


if __name__ == "__main__":
    sys.exit(main())
