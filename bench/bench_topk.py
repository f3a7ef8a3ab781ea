"""Top-K storage on the embedded model: how much smaller, and how far off KL / JS are.

One ``qfair study`` writes the embedded model (SmolLM2-135M) in full precision and
with bitsandbytes int8 and NF4 on the default task samples (``--limit`` per task),
once with full rows and once per K with ``--store topk:K``. Then, per K and per
quantized spec:

- storage: bytes of the stored rows (``logits/``) and of the whole dump, top-K over full;
- error of the top-K comparison against the exact one (both dumps full), for
  (base top-K vs quantized full) and (both top-K): mean KL(P||Q) and JS as
  lower bounds vs the exact means (relative error of the mean), and per token
  the median and 95th percentile of the relative shortfall; overlap_at_k for
  k <= K must equal the exact one.

    nice -n 10 .venv/bin/python bench/bench_topk.py --out /tmp/qfair-topk --ks 32,128,512 --limit 10

Records ``uptime`` before and after; deletes nothing (rerunning reuses the dumps).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

TASKS = ["piqa", "boolq", "openbookqa", "arc_easy", "hellaswag", "truthfulqa_mc2", "xstorycloze_en",
         "crows_pairs_english"]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def dir_bytes(p: Path, sub: str | None = None) -> int:
    root = p / sub if sub else p
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/qfair-topk")
    ap.add_argument("--ks", default="32,128,512")
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bootstrap", type=int, default=200)
    args = ap.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = "\n".join(textwrap.dedent(f"""
        [[tasks]]
        name = "{name}"
        tasks = {json.dumps(TASKS)}
        store = "{store}"
        """) for name, store in [("full", "full"), *((f"k{k}", f"topk:{k}") for k in ks)])
    sf = out / "study.toml"
    sf.write_text(textwrap.dedent(f"""\
        name = "topk-storage"
        quant = ["bnb-int8", "bnb-nf4"]

        [[models]]
        id = "smollm2-135m"
        label = "smollm2"

        [dump]
        limit = {args.limit}
        threads = {args.threads}

        [analysis]
        bootstrap = {args.bootstrap}
        report = false
        """) + groups)
    print(f"# load before: {uptime()}")
    t0 = time.perf_counter()
    from qfair.study import run_study

    res = run_study(sf, out / "study", log=lambda s: print(s, flush=True))
    print(f"# study: {time.perf_counter() - t0:.0f} s; load after: {uptime()}")
    if res.failed:
        print(res.failed)
        return 1

    import qfair

    dumps = out / "study" / "dumps" / "smollm2"
    full = {s: dumps / "full" / s for s in ("none", "bnb-int8", "bnb-nf4")}
    exact = {}
    for spec in ("bnb-int8", "bnb-nf4"):
        exact[spec] = qfair.compare(full["none"], full[spec], bootstrap=50, uncertainty=False).tokens
    print("\n| K | spec | rows bytes top-K / full | dump bytes top-K / full | pair | mean KL exact | mean KL "
          "(bound) | rel. error of mean | per-token shortfall median / p95 | mean JS rel. error | overlaps exact |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k in ks:
        tk = {s: dumps / f"k{k}" / s for s in ("none", "bnb-int8", "bnb-nf4")}
        rows_ratio = dir_bytes(tk["none"], "logits") / dir_bytes(full["none"], "logits")
        dump_ratio = dir_bytes(tk["none"]) / dir_bytes(full["none"])
        for spec in ("bnb-int8", "bnb-nf4"):
            ex = exact[spec]
            for pair, (b, q) in (("base top-K vs quant full", (tk["none"], full[spec])),
                                 ("both top-K", (tk["none"], tk[spec]))):
                t = qfair.compare(b, q, bootstrap=50, uncertainty=False).tokens
                kl_e, kl_b = ex["kl_pq"].to_numpy(), t["kl_pq"].to_numpy()
                js_e, js_b = ex["js"].to_numpy(), t["js"].to_numpy()
                ok = np.isfinite(kl_e) & np.isfinite(kl_b) & (kl_e > 0)
                short = (kl_e[ok] - kl_b[ok]) / kl_e[ok]
                over = all(np.allclose(ex[c].to_numpy(), t[c].to_numpy(), atol=1e-6, equal_nan=True)
                           for c in ex.columns if c.startswith("overlap_at_") and int(c.rsplit("_", 1)[1]) <= k)
                assert (kl_b[ok] <= kl_e[ok] * (1 + 1e-5) + 1e-9).all(), "a bound above the exact KL"
                print(f"| {k} | {spec} | {rows_ratio:.4f} | {dump_ratio:.4f} | {pair} | {kl_e[ok].mean():.5f} | "
                      f"{kl_b[ok].mean():.5f} | {(kl_e[ok].mean() - kl_b[ok].mean()) / kl_e[ok].mean():.2e} | "
                      f"{np.median(short):.2e} / {np.quantile(short, 0.95):.2e} | "
                      f"{(np.nanmean(js_e) - np.nanmean(js_b)) / np.nanmean(js_e):.2e} | {over} |", flush=True)
    print(f"\n# rows compared: {len(exact['bnb-int8'])}; load at the end: {uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
