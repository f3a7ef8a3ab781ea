"""Generation on the embedded SmolLM2-135M (CPU), as ratios in one run:

1. qfair's decoder (left-padded batches, KV cache, every generated position's
   float32 log-softmax row converted to the stored float16 and the
   target-token scalars) against plain ``model.generate`` with the same
   batches, left padding, greedy decoding and ``max_new_tokens`` (target:
   within 15 %); the generated tokens are checked to be identical;
2. the whole ``qfair dump`` of the same prompts (decoding + char offsets +
   shards and tables written) in new tokens/s;
3. teacher forcing: rows/s of the same model scored on those texts;
4. ``qfair analyze`` of a generation pair (base vs bnb-nf4 teacher-forced on
   it, B bootstrap resamples): wall time.

Model loading is excluded. Decoder and generate runs are interleaved (order
alternating) and repeated; medians of wall and of process CPU time (less
sensitive to other jobs on a shared box, with one torch thread) are reported
with ``uptime``'s load average.

    .venv/bin/python bench/bench_generation.py --threads 1 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="gen_stories")
    ap.add_argument("--limit", type=int, default=16, help="prompts (default 16)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bootstrap", type=int, default=10_000)
    ap.add_argument("--skip-analysis", action="store_true")
    ap.add_argument("--out", default="bench/results/bench_generation.json")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import qfair.tasks as T
    from qfair.generation.decode import Decoder, DecodeSettings, LanguageModel, encode_prompt
    from qfair.generation.producer import run_generation_dump
    from qfair.generation.teacher import teacher_force
    from qfair.models import load_model

    loaded = load_model(progress=False)
    tok = loaded.tokenizer
    tasks = [T.get(t, limit=args.limit) for t in args.tasks.split(",")]
    texts = [d.context for t in tasks for d in t.docs()]
    prompts = [encode_prompt(tok, p) for p in texts]
    lm = LanguageModel(loaded.model, tok)
    st = DecodeSettings(max_new_tokens=args.max_new_tokens)
    dec = Decoder(lm, st, keep_rows=True, store_dtype="f16")
    batches = [list(range(i, min(i + args.batch_size, len(prompts)))) for i in range(0, len(prompts),
                                                                                     args.batch_size)]

    def run_qfair():
        out = []
        for b in batches:
            out += [c.ids for c in dec.generate([prompts[i] for i in b])]
        return out

    def run_generate():
        out = []
        with torch.inference_mode():
            for b in batches:
                width = max(len(prompts[i]) for i in b)
                ids = torch.full((len(b), width), lm.pad_id, dtype=torch.long)
                mask = torch.zeros((len(b), width), dtype=torch.long)
                for r, i in enumerate(b):
                    ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
                    mask[r, width - len(prompts[i]):] = 1
                g = loaded.model.generate(ids, attention_mask=mask, max_new_tokens=st.max_new_tokens,
                                          do_sample=False, pad_token_id=lm.pad_id, eos_token_id=sorted(lm.eos_ids))
                for r in range(len(b)):
                    new = g[r, width:].tolist()
                    cut = next((k + 1 for k, t in enumerate(new) if t in lm.eos_ids), len(new))
                    out.append(new[:cut])
        return out

    times: dict[str, list[float]] = {"qfair_decoder": [], "model_generate": []}
    cpu: dict[str, list[float]] = {"qfair_decoder": [], "model_generate": []}
    ref_ids = None
    for i in range(args.repeats):
        order = (("qfair_decoder", run_qfair), ("model_generate", run_generate))
        for name, fn in (order if i % 2 == 0 else order[::-1]):
            t0, c0 = time.perf_counter(), time.process_time()
            ids = fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            if ref_ids is None:
                ref_ids = ids
            elif ids != ref_ids:
                print(f"warning: {name} generated other tokens than the first run", file=sys.stderr)
    n_new = sum(len(x) for x in ref_ids)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    res: dict = {"prompts": len(prompts), "batch_size": args.batch_size, "max_new_tokens": st.max_new_tokens,
                 "new_tokens": n_new, "threads": torch.get_num_threads(), "times_s": times, "cpu_s": cpu,
                 "tokens_per_s": {k: n_new / v for k, v in med.items()},
                 "decoder_over_generate": med["qfair_decoder"] / med["model_generate"],
                 "decoder_over_generate_cpu": med_cpu["qfair_decoder"] / med_cpu["model_generate"],
                 "decoder_over_generate_min": min(times["qfair_decoder"]) / min(times["model_generate"])}

    print(json.dumps(res), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = run_generation_dump(Path(tmp) / "base", loaded, tasks, settings=st, batch_size=args.batch_size,
                                progress=False)
        res["dump_s"] = time.perf_counter() - t0
        res["dump_tokens_per_s"] = s.n_generated / res["dump_s"]
        ts = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for b in batches:
                teacher_force(lm, [prompts[i] for i in b], [ref_ids[i] for i in b])
            ts.append(time.perf_counter() - t0)
        res["teacher_forcing_rows_per_s"] = n_new / statistics.median(ts)
        if not args.skip_analysis:
            from qfair.analyze import compare

            nf4 = load_model(quant="bnb-nf4", progress=False)
            t0 = time.perf_counter()
            run_generation_dump(Path(tmp) / "nf4", nf4, tasks, settings=st, batch_size=args.batch_size,
                                reference=Path(tmp) / "base", progress=False)
            res["dump_nf4_reference_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            cmp = compare(Path(tmp) / "base", Path(tmp) / "nf4", bootstrap=args.bootstrap)
            res["analyze_s"] = time.perf_counter() - t0
            res["analyze_bootstrap"] = args.bootstrap
            kl = cmp.tokens["kl_pq"].mean()
            res["nf4_mean_kl"] = float(kl)
    res["load_average"] = os.getloadavg()
    print(json.dumps(res, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
