"""Orientation timings for model loading and quantized forward passes on SmolLM2-135M.

Measures, in one run:
  1. the first load of the embedded GGUF model (GGUF -> float conversion + cache write)
     into a fresh cache directory, and the second (cached) load;
  2. for each quantization spec: load time (from the float cache) and the wall
     time of one forward pass over 512 tokens (batch 1), after one short warm-up
     call, plus KL(base || quantized) per token on those 512 tokens.  Process CPU
     time (all threads) is printed beside each wall time: on a shared machine it
     moves less than wall time does.

These are single runs for orientation, not statistics; other work on the
machine moves them.  Usage:

    .venv/bin/python bench/bench_quant_load.py [--specs none,bnb-int8,...] [--tokens 512]
                                               [--cache-dir DIR] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

SPECS = ["none", "bnb-int8", "bnb-nf4", "quanto-int8", "torchao-int8wo"]

# original filler text, repeated until the token budget is reached
TEXT = ("The survey team walked the northern ridge at dawn, counting nests and noting the wind. "
        "By noon the clouds had lowered, the counts were copied twice, and the cook argued that "
        "lentils are a perfectly good lunch for the fourth day in a row. ")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specs", default=",".join(SPECS))
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--cache-dir", default=None,
                    help="cache root to use (default: a fresh temporary directory, so the conversion is timed)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import torch

    from qfair.models import load_model

    tmp = None
    cache_dir = args.cache_dir
    if cache_dir is None:
        tmp = tempfile.mkdtemp(prefix="qfair-bench-cache-")
        cache_dir = tmp
    results: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "loadavg_at_start": list(os.getloadavg())},
        "tokens": args.tokens,
        "specs": {},
    }
    try:
        t = time.perf_counter()
        base = load_model(cache_dir=cache_dir, progress=False)
        first = time.perf_counter() - t
        t = time.perf_counter()
        base = load_model(cache_dir=cache_dir, progress=False)
        second = time.perf_counter() - t
        results["load"] = {"first_conversion_s": round(first, 2), "cached_s": round(second, 2),
                           "from_cache": [False, base.from_cache]}
        print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
              f"load average at start {os.getloadavg()[0]:.1f}", flush=True)
        print(f"SmolLM2 load: first (GGUF conversion + cache write) {first:.1f} s, cached {second:.2f} s",
              flush=True)

        ids = base.tokenizer(TEXT * 64, return_tensors="pt").input_ids[:, : args.tokens]
        assert ids.shape[1] == args.tokens, ids.shape
        with torch.inference_mode():
            base_lp = base.model(ids).logits.float().log_softmax(-1)
        del base

        for spec in [s.strip() for s in args.specs.split(",") if s.strip()]:
            t, c = time.perf_counter(), time.process_time()
            lm = load_model(quant=spec, cache_dir=cache_dir, progress=False)
            load_s, load_cpu = time.perf_counter() - t, time.process_time() - c
            with torch.inference_mode():
                lm.model(ids[:, :8])  # warm-up (lazy kernels, allocator)
                t, c = time.perf_counter(), time.process_time()
                logits = lm.model(ids).logits
                fwd, fwd_cpu = time.perf_counter() - t, time.process_time() - c
                lq = logits.float().log_softmax(-1)
                kl = torch.nn.functional.kl_div(lq, base_lp, log_target=True, reduction="none").sum(-1).mean()
            results["specs"][spec] = {"load_s": round(load_s, 2), "load_cpu_s": round(load_cpu, 2),
                                      "forward_s": round(fwd, 3), "forward_cpu_s": round(fwd_cpu, 3),
                                      "kl_base_q": float(kl)}
            print(f"{spec:<16} load {load_s:6.2f} s (cpu {load_cpu:6.2f})   forward/{args.tokens} tok "
                  f"{fwd:7.3f} s (cpu {fwd_cpu:7.3f})   KL(base||q) {float(kl):.4f} nats/token", flush=True)
            del lm, logits, lq
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
