"""The golden dump: a tiny float64 Llama scored on a fixed sample.

``python tests/golden_dump.py --record`` (re)writes ``tests/data/golden/``: the three
tables (Parquet) and ``shards.json`` (sha256 of every ``.npy`` shard). The test
``tests/test_golden.py`` re-runs the same dump and requires identical table
contents and byte-identical shards, so a refactoring of the dump path cannot
change what is written without the test noticing. Only re-record on purpose,
and say why in the commit.

The model runs in float64 so that the stored float32 / float16 values barely
depend on which kernels torch runs on the CPU: on a machine whose arithmetic
fingerprint (:func:`arithmetic_fingerprint`) equals the recorded one the test
requires exact equality; elsewhere a float64 rounding difference may move the
last bit of a float64 value or, rarely, one float32 / float16 rounding.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
GOLDEN = HERE / "data" / "golden"
TABLES = ("examples", "choices", "tokens")
SHARD_ROWS = 40


def golden_dump(out: Path) -> Path:
    """Write the golden dump into ``out`` (a fresh directory) and return it."""
    import torch
    from test_dump_support import load_tiny, write_mc_file

    import qfair.tasks as T
    from qfair.dump.run import run_dump
    from qfair.models.tiny import make_tiny_model

    work = out.parent / (out.name + "-work")
    work.mkdir(parents=True, exist_ok=True)
    model_dir = make_tiny_model("llama", work / "tiny", seed=1)
    mc = write_mc_file(work / "mc.jsonl", 12, seed=2)
    loaded = load_tiny(model_dir)
    loaded.model.to(torch.float64)
    tasks = [T.get("mc", data_file=mc), T.get("piqa", limit=3), T.get("crows_pairs_english", limit=3),
             T.get("truthfulqa_mc2", limit=2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_dump(out, loaded, tasks, shard_rows=SHARD_ROWS, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def cpu_capability() -> str:
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def arithmetic_fingerprint() -> str:
    """sha256 of the golden model's float64 logits on a fixed input (one thread).

    torch's capability name is not enough to know whether a machine computes
    the golden dump bit for bit: two CPUs that both report "AVX512" can run
    different kernel paths (seen: the earlier recording machine and an AMD EPYC
    differ in the last bits of float64 log-likelihoods). Equal fingerprints mean
    the same arithmetic for this model, so there the test requires identical bytes."""
    import torch
    from test_dump_support import load_tiny

    from qfair.models.tiny import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        m = load_tiny(make_tiny_model("llama", Path(tmp) / "tiny", seed=1)).model.to(torch.float64)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                logits = m(torch.arange(1, 41).reshape(2, 20)).logits
        finally:
            torch.set_num_threads(threads)
    return hashlib.sha256(logits.numpy().tobytes()).hexdigest()


def shard_hashes(dump: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((dump / "logits").glob("*.npy"))}


def record() -> None:
    import polars as pl

    with tempfile.TemporaryDirectory() as tmp:
        d = golden_dump(Path(tmp) / "golden")
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for t in TABLES:
            pl.read_parquet(d / f"{t}.parquet").write_parquet(GOLDEN / f"{t}.parquet", compression="zstd")
        import numpy as np

        for p in sorted((d / "logits").glob("*.npy")):
            (GOLDEN / "logits").mkdir(exist_ok=True)
            np.save(GOLDEN / "logits" / p.name, np.load(p))
        meta = {"cpu_capability": cpu_capability(), "arithmetic": arithmetic_fingerprint(), "shards": shard_hashes(d)}
        (GOLDEN / "shards.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"recorded {GOLDEN}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/golden_dump.py --record   (re-records tests/data/golden; say why in the commit)")
    record()
