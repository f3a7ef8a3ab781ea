"""Import and analysis of a large llama.cpp .kld pair, against llama-perplexity itself.

1. Writes a synthetic pair of ``llama-perplexity --kl-divergence-base`` files
   (the format written here from random logits with qfair.llamacpp.encode_rows,
   exactly as llama.cpp encodes rows; default: 40 chunks of 512 tokens of a
   49,152-token vocabulary, 1.00 GB per file).
2. Times, each under ``/usr/bin/time -v`` (wall time and peak RSS):
   - qfair: ``qfair import llamacpp`` of both files, then ``qfair analyze`` of the pair
     (the default 10,000 bootstrap resamples over chunks, the token table, llama.cpp's summary);
   - llama.cpp, two-file: ``llama-perplexity --kl-divergence`` with the quantized side read
     from the second file (a llama-perplexity changed to do so, ``KLD_QUANT_FILE``; see
     tests/data/llamacpp/README.md). It re-normalises the second file's rows, which qfair
     reads as stored (docs/llamacpp.md), so the report records the largest difference
     between the two printed summaries (line for line equality with qfair's
     ``q_rows="logits"`` reading is what tests/test_llamacpp.py checks);
   - llama.cpp, stock: ``llama-perplexity --kl-divergence`` with a quantized GGUF live against
     the base file (what users run; it evaluates the model, which qfair does not need to).
3. Deletes the big files (``--keep`` keeps them).

    .venv/bin/python bench/bench_kld.py --llama-bin DIR --model base.gguf --quant-model q4_0.gguf

``DIR`` holds ``llama-perplexity`` (and ``llama-perplexity-patched`` for the two-file run).
The models only need the file's vocabulary (49,152 tokens: SmolLM2); their output does not
enter the comparison of the two files. Median of ``--repeats`` runs per command; ``uptime``
load recorded before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_pair(d: Path, n_ctx: int, n_chunk: int, vocab: int, seed: int) -> tuple[Path, Path]:
    """Two .kld files of one random text: base logits, and base + noise for the quantized side."""
    from qfair.llamacpp import MAGIC, KldHeader, encode_rows

    rng = np.random.default_rng(seed)
    h = KldHeader(n_ctx, vocab, n_chunk)
    tokens = rng.integers(0, vocab, size=n_ctx * n_chunk)
    head = (MAGIC + np.array([n_ctx], "<u4").tobytes() + np.array([vocab, n_chunk], "<i4").tobytes()
            + tokens.astype("<i4").tobytes())
    # a Zipf-like logit profile per row (a few likely tokens, a long tail), as language models give
    profile = -np.log1p(np.arange(vocab, dtype=np.float32)) * 1.5
    base, quant = d / "base.kld", d / "quant.kld"
    with open(base, "wb") as fb, open(quant, "wb") as fq:
        fb.write(head)
        fq.write(head)
        for _ in range(n_chunk):
            lg = (profile[rng.permutation(vocab)][None, :]
                  + rng.normal(0, 1.0, size=(h.rows_per_chunk, vocab))).astype(np.float32)
            fb.write(encode_rows(lg).tobytes())
            fq.write(encode_rows((lg + rng.normal(0, 0.5, size=lg.shape)).astype(np.float32)).tobytes())
    assert base.stat().st_size == h.file_bytes
    return base, quant


def timed(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run under /usr/bin/time -v: wall seconds, peak RSS (MB), stdout+stderr."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    return {"wall_s": wall, "peak_rss_mb": int(m.group(1)) / 1024 if m else None, "output": p.stdout + p.stderr}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-bin", default=os.environ.get("QFAIR_LLAMA_CPP_BIN"))
    ap.add_argument("--model", required=True, help="GGUF whose vocabulary matches (for llama-perplexity)")
    ap.add_argument("--quant-model", default=None, help="quantized GGUF for the stock (live) run")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="use base.kld / quant.kld already in --dir")
    ap.add_argument("--out", default="bench/results/bench_kld.json")
    args = ap.parse_args(argv)
    if not args.llama_bin:
        raise SystemExit("--llama-bin (or $QFAIR_LLAMA_CPP_BIN): the directory of llama-perplexity")
    lb = Path(args.llama_bin)
    work = Path(args.dir or tempfile.mkdtemp(prefix="qfair-bench-kld-"))
    work.mkdir(parents=True, exist_ok=True)
    qfair = [sys.executable, "-m", "qfair"]
    report: dict = {"uptime_before": uptime(), "ctx": args.ctx, "chunks": args.chunks, "vocab": args.vocab,
                    "threads": args.threads}
    try:
        t0 = time.perf_counter()
        if args.reuse and (work / "base.kld").is_file() and (work / "quant.kld").is_file():
            base, quant = work / "base.kld", work / "quant.kld"
        else:
            base, quant = write_pair(work, args.ctx, args.chunks, args.vocab, seed=0)
        report["generate_s"] = time.perf_counter() - t0
        report["file_bytes"] = base.stat().st_size
        print(f"pair written: 2 x {base.stat().st_size / 1e9:.3f} GB in {report['generate_s']:.0f} s", flush=True)
        env = {"OMP_NUM_THREADS": str(args.threads)}
        runs: dict[str, list[dict]] = {k: [] for k in ("import_base", "import_quant", "analyze", "llama_twofile",
                                                        "llama_live")}
        for _ in range(args.repeats):
            for name, src in (("import_base", base), ("import_quant", quant)):
                runs[name].append(timed([*qfair, "import", "llamacpp", str(src), "--out", str(work / name),
                                         "--overwrite", "--no-progress", "--threads", str(args.threads)], env))
            runs["analyze"].append(timed([*qfair, "analyze", str(work / "import_base"), str(work / "import_quant"),
                                          "--out", str(work / "analysis"), "--no-progress", "--threads",
                                          str(args.threads), "--chunk-rows", "256", "--format", "parquet"], env))
            common = ["-c", str(args.ctx), "-b", str(args.ctx), "-t", str(args.threads), "--kl-divergence-base",
                      str(base), "--kl-divergence"]
            if (lb / "llama-perplexity-patched").is_file():
                runs["llama_twofile"].append(timed([str(lb / "llama-perplexity-patched"), "-m", args.model, *common],
                                                   {"KLD_QUANT_FILE": str(quant)}))
            if args.quant_model:
                runs["llama_live"].append(timed([str(lb / "llama-perplexity"), "-m", args.quant_model, *common]))
        from qfair.llamacpp import read_layout

        mine = read_layout(runs["analyze"][-1]["output"])
        if runs["llama_twofile"]:
            theirs = read_layout(runs["llama_twofile"][-1]["output"])
            report["twofile_lines"] = len(theirs)
            report["twofile_max_abs_diff"] = _max_abs_diff(mine, theirs)
        summary = {}
        for k, v in runs.items():
            if v:
                summary[k] = {"wall_s_median": statistics.median(r["wall_s"] for r in v),
                              "peak_rss_mb_max": max(r["peak_rss_mb"] for r in v), "n": len(v)}
        q_total = sum(summary[k]["wall_s_median"] for k in ("import_base", "import_quant", "analyze"))
        summary["qfair_total_s"] = q_total
        for k in ("llama_twofile", "llama_live"):
            if k in summary:
                summary[f"{k}_over_qfair"] = summary[k]["wall_s_median"] / q_total
        report["results"] = summary
        report["dump_bytes"] = sum(f.stat().st_size for f in (work / "import_base").rglob("*") if f.is_file())
        report["uptime_after"] = uptime()
        report["summary_lines"] = mine[-8:]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "summary_lines"}, indent=1))
    return 0


def _max_abs_diff(a: list[str], b: list[str]) -> float | None:
    """The largest difference between the numbers of two printed summaries (None: other layouts)."""
    na = [[float(x) for x in re.findall(r"-?\d+\.\d+", ln)] for ln in a]
    nb = [[float(x) for x in re.findall(r"-?\d+\.\d+", ln)] for ln in b]
    if len(na) != len(nb) or any(len(x) != len(y) for x, y in zip(na, nb)):
        return None
    return max((abs(x - y) for xs, ys in zip(na, nb) for x, y in zip(xs, ys)), default=0.0)


if __name__ == "__main__":
    sys.exit(main())
