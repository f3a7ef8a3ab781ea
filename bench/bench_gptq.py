"""qfair's own GPTQ on the embedded model (SmolLM2-135M), timed; llmcompressor's
GPTQ in the same run when it is installed.

Every run quantizes afresh (a temporary cache directory) and prints the wall
time of the quantization, the machine's load average before and after, and the
sum over layers of the reconstruction errors of GPTQ and of RTN on the same
grid (from the manifest), plus the float-vs-quantized token KL on a few texts.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_gptq.py [--bits 4] [--group-size 64] \
        [--samples 128] [--seqlen 512] [--threads 1] [--act-order]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time

TEXTS = ["The committee met on Tuesday, argued until noon, and agreed on nothing at all.",
         "A careful baker weighs the flour twice and trusts the oven thermometer once.",
         "Quantized weights store fewer bits, and the model still has to guess the next word."]


def _kl(float_lm, q_lm) -> float:
    import torch

    total, n = 0.0, 0
    for t in TEXTS:
        ids = float_lm.tokenizer(t, return_tensors="pt").input_ids
        with torch.no_grad():
            p = torch.log_softmax(float_lm.model(ids).logits.float(), -1)
            q = torch.log_softmax(q_lm.model(ids).logits.float(), -1)
        total += float((p.exp() * (p - q)).sum(-1).double().sum())
        n += ids.shape[1]
    return total / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--act-order", action="store_true")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from qfair.models import load_model

    common = f"bits={args.bits},group_size={args.group_size},samples={args.samples},seqlen={args.seqlen}"
    specs = [f"gptq:{common}" + (",act_order=true" if args.act_order else "")]
    if importlib.util.find_spec("llmcompressor") is not None:
        specs.append(f"gptq:engine=llmcompressor,{common}")
    else:
        print("llmcompressor is not installed: its GPTQ is not timed (make install-gptq)")
    f = load_model(None, dtype="float32", device="cpu", progress=False)
    print(f"torch threads {args.threads}; cpu count {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="qfair-bench-gptq-") as cache:
        for spec in specs:
            load0 = os.getloadavg()
            t0 = time.perf_counter()
            q = load_model(None, quant=spec, cache_dir=cache, progress=False)
            wall = time.perf_counter() - t0
            d = q.extra["quant_details"]
            print(f"{spec}: load {wall:.1f} s (quantization {d.get('build_seconds') or 0:.1f} s); "
                  f"load average before {load0[0]:.2f}, after {os.getloadavg()[0]:.2f}")
            prof = d.get("build_profile") or {}
            layers = d.get("layers") or {}
            if prof:
                tokens = max((s.get("tokens", 0) for s in layers.values()), default=0)
                print(f"  {d['calibration']['n_texts']} calibration texts, {tokens} tokens; seconds by phase "
                      "(hessian is part of capture): " + ", ".join(f"{k} {v:.1f}" for k, v in prof.items()))
            if layers:
                e = sum(s["error"] for s in layers.values())
                r = sum(s["rtn_error"] for s in layers.values())
                worse = sum(s["error"] > s["rtn_error"] for s in layers.values())
                print(f"  {len(layers)} layers: sum of reconstruction errors GPTQ {e:.4g}, RTN {r:.4g} "
                      f"(GPTQ above RTN on {worse} layers)")
            print(f"  token KL(float || quantized) on {len(TEXTS)} texts: {_kl(f, q):.4f} nats")
            del q
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
