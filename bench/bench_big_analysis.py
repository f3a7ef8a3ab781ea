"""``qfair analyze`` of a dump pair larger than this machine's RAM: rows/s and peak RSS.

1. Writes two synthetic multiple-choice dumps through ``DumpWriter`` (default:
   140,000 rows x 49,152-token vocabulary in float16, 13.8 GB each; 2 choices x 5
   tokens per example). Rows are drawn from a pool of distinct log-softmax rows
   (Zipf-like, as language models give), the quantized side a perturbed copy,
   so writing is fast while every row on disk is a real distribution and the two
   files differ; the scalars of ``tokens.parquet`` are those of the rows.
2. Times the C++ stream alone over the stored shards (the kernel's rows/s on
   these rows, and its CPU seconds) and qfair's xxh3_128 and sha256 of every
   shard on one thread (the CPU seconds full verification costs wherever it
   runs; with the kernel's, a floor under any verified analysis on these
   cores). Then ``qfair analyze --profile`` on the pair under ``/usr/bin/time
   -v`` (wall time, CPU time, peak resident memory, time by stage), with the
   default 10,000 bootstrap resamples: verifying every file (xxh3_128 of the
   shards, on a second thread: the default), with ``--skip-hash``, and
   verifying by sha256 as for a dump written before qfair recorded xxh3_128;
   prints each as a ratio of the kernel's rows/s. Then the disk's sequential read rate (``dd
   iflag=direct``) and, where the page cache can be dropped, both analyses
   again from a cold cache as ratios of it (the shards then read with O_DIRECT,
   :mod:`qfair.directio`), and the verified one once more reading through the
   page cache as qfair did before (``QFAIR_DIRECT_READ=never``). ``--repeats`` rounds of each (3 by
   default, interleaved): every ratio is taken within its round, against the
   kernel or the disk timed in that round, and the median round's is reported
   with all of them (a shared VM's speed drifts by 10-20 % between minutes).
3. Deletes the dumps (``--keep`` keeps them).

    nice -n 10 .venv/bin/python bench/bench_big_analysis.py --out /tmp/qfair-big

Check first that the pair is larger than RAM (``free -g``) and that the disk has
room for it; ``uptime`` is recorded before and after.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

TOKENS_PER_CHOICE = 5
CHOICES = 2


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def pools(vocab: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    profile = -np.log1p(np.arange(vocab, dtype=np.float32)) * 1.5
    base = np.empty((n, vocab), np.float32)
    quant = np.empty((n, vocab), np.float32)
    for i in range(n):
        lg = profile[rng.permutation(vocab)] + rng.normal(0, 0.5, vocab).astype(np.float32)
        lq = lg + rng.normal(0, 0.3, vocab).astype(np.float32)
        for src, dst in ((lg, base), (lq, quant)):
            m = src.max()
            dst[i] = src - m - np.log(np.exp(src - m, dtype=np.float64).sum()).astype(np.float32)
    return base, quant


def write_dump(out: Path, pool: np.ndarray, base_pool: np.ndarray, rows: int, shard_rows: int) -> float:
    from qfair.dump import DumpWriter

    vocab = pool.shape[1]
    per_ex = CHOICES * TOKENS_PER_CHOICE
    n_ex = rows // per_ex
    P = pool.shape[0]
    f16 = pool.astype(np.float16)
    lp = f16.astype(np.float32)
    lp -= np.log(np.exp(lp.astype(np.float64)).sum(1, keepdims=True)).astype(np.float32)
    order = np.argsort(-base_pool, axis=1)[:, :3]
    target = order[:, 2]                                        # each pool row's third most likely token (base)
    ent = -(np.exp(lp.astype(np.float64)) * lp).sum(1)
    mx = lp.max(1)
    am = lp.argmax(1)
    t_lp = lp[np.arange(P), target]
    rank = 1 + (lp > t_lp[:, None]).sum(1)
    ids = [f"ex{i:06d}" for i in range(n_ex)]
    examples = {"example_id": ids, "task": ["synthetic"] * n_ex, "doc_index": list(range(n_ex)),
                "group": [("g1", "g2", "g3")[i % 3] for i in range(n_ex)], "label": [i % CHOICES for i in range(n_ex)],
                "n_choices": [CHOICES] * n_ex, "context": ["synthetic context"] * n_ex,
                "choices": [["a", "b"]] * n_ex, "labels": [None] * n_ex, "extras": [None] * n_ex}
    w = DumpWriter(out, kind="multiple_choice", examples=examples, vocab_size=vocab,
                   tokenizer={"vocab_size": vocab, "vocab_sha256": "0" * 64, "model_vocab_size": vocab},
                   tasks=[{"name": "synthetic", "kind": "multiple_choice", "prompt_format_version": "synthetic@1"}],
                   rows_per_example=[per_ex] * n_ex, shard_rows=shard_rows, store="full", store_dtype="f16",
                   counts={"choices": n_ex * CHOICES})
    t0 = time.perf_counter()
    for i in range(w.start, w.stop):
        r0 = w.next_row
        idx = (np.arange(r0, r0 + per_ex, dtype=np.int64) * 2654435761) % P
        ch = {"task": ["synthetic"] * CHOICES, "example_id": [ids[i]] * CHOICES, "doc_index": [i] * CHOICES,
              "choice": list(range(CHOICES)),
              "loglik": [float(t_lp[idx[c * TOKENS_PER_CHOICE:(c + 1) * TOKENS_PER_CHOICE]].sum())
                         for c in range(CHOICES)],
              "n_tokens": [TOKENS_PER_CHOICE] * CHOICES, "n_chars": [1] * CHOICES, "n_bytes": [1] * CHOICES,
              "is_greedy": [False] * CHOICES, "first_row": [r0 + c * TOKENS_PER_CHOICE for c in range(CHOICES)],
              "n_rows": [TOKENS_PER_CHOICE] * CHOICES}
        tk = {"row": list(range(r0, r0 + per_ex)), "task": ["synthetic"] * per_ex, "example_id": [ids[i]] * per_ex,
              "choice": [c for c in range(CHOICES) for _ in range(TOKENS_PER_CHOICE)],
              "pos": list(range(TOKENS_PER_CHOICE)) * CHOICES, "target": target[idx].tolist(),
              "logprob": t_lp[idx].tolist(), "entropy": ent[idx].tolist(), "max_logprob": mx[idx].tolist(),
              "argmax": am[idx].tolist(), "rank": rank[idx].tolist()}
        w.add({"choices": ch, "tokens": tk}, f16[idx])
    w.close()
    return time.perf_counter() - t0


# The timed commands run as an installed qfair does, with its modules' bytecode cached:
# PYTHONDONTWRITEBYTECODE (set on some development machines) would have every run compile
# qfair's sources again (0.14 s here); warm_bytecode() writes the cache once before timing.
RUN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def warm_bytecode() -> None:
    subprocess.run([sys.executable, "-c", "import qfair.cli, qfair.cli.cmd_analyze, qfair.analyze.compare"],
                   env=RUN_ENV, check=True)


def timed(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env={**RUN_ENV, **(env or {})})
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([0-9:.]+)", p.stderr).group(1)
    parts = [float(x) for x in wall.split(":")]
    secs = sum(x * 60 ** i for i, x in enumerate(reversed(parts)))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1)) / 1024
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([0-9.]+)", p.stderr).group(1)) for k in ("User", "System"))
    prof = p.stderr.split("time by stage", 1)
    profile = ("time by stage" + prof[1].split("\tCommand being timed")[0]).rstrip() if len(prof) == 2 else ""
    return {"wall": secs, "cpu": cpu, "rss_mb": rss, "stderr_profile": profile}


def kernel_rate(out: Path, threads: int) -> float:
    """Rows/s of the C++ stream alone over the two dumps' stored shards (read + kernel, no Python work)."""
    import qfair
    from qfair.dump import open_dump

    b, q = open_dump(out / "base"), open_dump(out / "quant")
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for chunk in qfair.stream_divergence([str(p) for p in b.logit_paths], [str(p) for p in q.logit_paths],
                                         threads=threads):
        n += int(chunk.stop) - int(chunk.start)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n / wall, cpu


def hash_cost(out: Path, algorithm: str) -> tuple[float, float, int]:
    """(wall s, CPU s, bytes) of qfair's digest of every stored shard of both dumps on one thread,
    from the page cache: the CPU the verification needs whatever thread it runs on."""
    from qfair.fsutil import file_digest

    files = sorted(out.rglob("*.npy"))
    t0, c0 = time.perf_counter(), time.process_time()
    for f in files:
        file_digest(f, algorithm)
    return time.perf_counter() - t0, time.process_time() - c0, sum(f.stat().st_size for f in files)


def record_xxh3(dump: Path) -> None:
    """A pair kept from a version of qfair that recorded only sha256: add each shard's
    xxh3_128, as today's writer records it."""
    import json

    from qfair.fsutil import atomic_write_bytes, file_digest

    mp = dump / "manifest.json"
    m = json.loads(mp.read_text())
    if all(s.get("xxh3_128") for s in m["shards"]):
        return
    for s in m["shards"]:
        s["xxh3_128"] = file_digest(dump / s["file"], "xxh3_128")
    atomic_write_bytes(mp, (json.dumps(m, indent=1) + "\n").encode())


@contextmanager
def sha256_only(dumps: list[Path]):
    """The dumps' manifests without xxh3_128, as a dump written before qfair recorded it:
    the analysis then verifies the shards by their sha256. Restored afterwards."""
    import json

    from qfair.fsutil import atomic_write_bytes

    saved = {d: (d / "manifest.json").read_bytes() for d in dumps}
    try:
        for d, raw in saved.items():
            m = json.loads(raw)
            for s in m["shards"]:
                s.pop("xxh3_128", None)
            atomic_write_bytes(d / "manifest.json", json.dumps(m, indent=1).encode())
        yield
    finally:
        for d, raw in saved.items():
            atomic_write_bytes(d / "manifest.json", raw)


def warm(out: Path) -> None:
    """Read every stored shard once, so the kernel and the analyses that follow all read the rows
    from the page cache (a pair kept with --keep may have left it, e.g. after a cold run)."""
    for f in sorted(out.rglob("*.npy")):
        with open(f, "rb", buffering=0) as fh:
            while fh.read(1 << 24):
                pass


def disk_rate(out: Path) -> float | None:
    """Bytes/s of a sequential O_DIRECT read of one dump's shards (the page cache bypassed)."""
    files = sorted((out / "base").rglob("*.npy"))
    total, t0 = 0, time.perf_counter()
    for f in files:
        p = subprocess.run(["dd", f"if={f}", "of=/dev/null", "bs=16M", "iflag=direct"], capture_output=True)
        if p.returncode != 0:
            return None
        total += f.stat().st_size
    return total / (time.perf_counter() - t0)


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/qfair-big")
    ap.add_argument("--rows", type=int, default=140_000)
    ap.add_argument("--vocab", type=int, default=49_152)
    ap.add_argument("--pool", type=int, default=256)
    ap.add_argument("--shard-rows", type=int, default=4096)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds of the kernel and the three analyses (then of the disk and the two cold analyses), "
                         "interleaved; each ratio is taken within its round and the median round's is reported")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"# load before: {uptime()}")
    print(subprocess.run(["free", "-g"], capture_output=True, text=True).stdout)
    try:
        base_pool, quant_pool = pools(args.vocab, args.pool, 0)
        for name, pool in (("base", base_pool), ("quant", quant_pool)):
            if not (out / name / "manifest.json").is_file():
                s = write_dump(out / name, pool, base_pool, args.rows, args.shard_rows)
                gb = sum(f.stat().st_size for f in (out / name).rglob("*") if f.is_file()) / 1e9
                print(f"wrote {name}: {args.rows} rows, {gb:.2f} GB in {s:.0f} s ({gb / s:.2f} GB/s)", flush=True)
        del base_pool, quant_pool
        qfair = str(Path(sys.executable).with_name("qfair"))
        pair_gb = args.rows * args.vocab * 2 * 2 / 1e9
        warm(out)
        warm_bytecode()
        for name in ("base", "quant"):
            record_xxh3(out / name)
        k, k_cpu = kernel_rate(out, args.threads)
        print(f"kernel alone over the stored shards (stream_divergence, {args.threads} threads): {k:,.0f} rows/s "
              f"({k * args.vocab * 2 * 2 / 1e9:.2f} GB/s of row pairs), {k_cpu:.1f} CPU s", flush=True)
        costs = {}
        for algorithm in ("xxh3_128", "sha256"):
            h_wall, h_cpu, h_bytes = costs[algorithm] = hash_cost(out, algorithm)
            floor = (k_cpu + h_cpu) / args.threads
            print(f"{algorithm} of the shards alone (qfair.fsutil.file_digest, one thread): "
                  f"{h_bytes / h_wall / 1e9:.2f} GB/s, {h_cpu:.1f} CPU s; kernel + {algorithm} need "
                  f"{k_cpu + h_cpu:.1f} CPU s, so verifying every shard by it no analysis on {args.threads} cores "
                  f"can take less than {floor:.1f} s = {args.rows / floor / k:.2f} of the kernel's rows/s, before "
                  "any statistic", flush=True)
        dumps = [out / "base", out / "quant"]
        analyses = (("every file verified: xxh3_128 of the shards, sha256 of the tables", [], False),
                    ("--skip-hash", ["--skip-hash"], False),
                    ("every file verified by sha256, as a dump written before xxh3_128", [], True))
        cmd = [qfair, "analyze", str(out / "base"), str(out / "quant"), "--out", str(out / "analysis"),
               "--no-progress", "--threads", str(args.threads), "--profile"]
        # Rounds: the kernel, then each analysis; a ratio is taken within its round (the VM's speed
        # drifts between rounds), and the round with the median ratio is the one reported.
        rounds: dict[str, list[tuple[float, dict]]] = {label: [] for label, _, _ in analyses}
        for r in range(max(1, args.repeats)):
            if r:
                k, _ = kernel_rate(out, args.threads)
            for label, extra, old in analyses:
                with sha256_only(dumps) if old else nullcontext():
                    t = timed([*cmd, *extra])
                rounds[label].append((args.rows / t["wall"] / k, t))
                print(f"  round {r + 1}: kernel {k:,.0f} rows/s; {label.split(':')[0]}: {t['wall']:.1f} s = "
                      f"{args.rows / t['wall'] / k:.2f} of it", flush=True)
        for label, _, _ in analyses:
            got = sorted(rounds[label], key=lambda rt: rt[0])
            ratio, t = got[len(got) // 2]
            rate = args.rows / t["wall"]
            print(f"qfair analyze ({label}): {t['wall']:.1f} s, {rate:,.0f} rows/s "
                  f"({pair_gb / t['wall']:.2f} GB/s of rows), {ratio:.2f} of the kernel's rows/s in its round "
                  f"(median of {len(got)} rounds; all: {', '.join(f'{x:.2f}' for x, _ in rounds[label])}), "
                  f"peak RSS {t['rss_mb']:.0f} MB, {t['cpu']:.1f} CPU s (user + sys; steadier than wall on a "
                  "shared machine)", flush=True)
            print("  " + t["stderr_profile"].replace("\n", "\n  "), flush=True)
        disk = disk_rate(out)
        if disk is None:
            print("disk: dd iflag=direct could not read the shards here (O_DIRECT unsupported?)")
        elif not drop_caches():
            print("cold-cache run skipped: cannot drop the page cache here (not permitted)")
        else:
            cold_runs = (("every file verified", [], {}), ("--skip-hash", ["--skip-hash"], {}),
                         ("every file verified, read through the page cache (QFAIR_DIRECT_READ=never, "
                          "as before O_DIRECT reads)", [], {"QFAIR_DIRECT_READ": "never"}))
            cold: dict[str, list[tuple[float, float, dict]]] = {label: [] for label, _, _ in cold_runs}
            for r in range(max(1, args.repeats)):
                if r:
                    disk = disk_rate(out)
                print(f"  round {r + 1}: disk sequential read (dd iflag=direct, bs=16M): {disk / 1e9:.2f} GB/s",
                      flush=True)
                for label, extra, env in cold_runs:
                    drop_caches()
                    t = timed([*cmd, *extra], env)
                    cold[label].append((pair_gb / t["wall"] / (disk / 1e9), disk, t))
                    print(f"  round {r + 1}: cold, {label}: {t['wall']:.1f} s = "
                          f"{pair_gb / t['wall'] / (disk / 1e9):.2f} of the disk, {t['cpu']:.1f} CPU s", flush=True)
            for label, got in cold.items():
                ratio, disk, t = sorted(got, key=lambda x: x[0])[len(got) // 2]
                print(f"qfair analyze from a cold cache ({label}): {t['wall']:.1f} s = "
                      f"{pair_gb / t['wall']:.2f} GB/s of rows, {ratio:.2f} of the disk's sequential rate in its "
                      f"round ({disk / 1e9:.2f} GB/s; median of {len(got)} rounds; all: "
                      f"{', '.join(f'{x:.2f}' for x, _, _ in got)}), {t['cpu']:.1f} CPU s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    print(f"# load after: {uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
