"""Manifest, table schemas and atomic file helpers of the dump format.

Everything a dump holds is JSON, Parquet or ``.npy`` (``allow_pickle=False``).
Files are written to a temporary name in the same directory, flushed, fsync'd
and renamed into place, then the directory is fsync'd: a reader (or a resumed
run) sees either the old file or the complete new one, never a torn write.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from qfair.dump import DumpError
from qfair.fsutil import fsync_dir

FORMAT = "qfair-dump"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EXAMPLES = "examples.parquet"
CHOICES = "choices.parquet"
TOKENS = "tokens.parquet"
LOGITS_DIR = "logits"
PARTS_DIR = "parts"

STORE_MODES = ("full", "none")
STORE_DTYPES = ("f16", "f32", "bf16")
# numpy dtype string of each stored dtype (bf16 as raw uint16 bit patterns)
NPY_DTYPES = {"f16": "<f2", "f32": "<f4", "bf16": "<u2"}

REQUIRED_KEYS = ("format", "format_version", "status", "storage", "shards", "tokenizer", "vocab_size")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def shard_name(index: int) -> str:
    return f"{index:05d}.npy"


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("qfair", "torch", "transformers", "bitsandbytes", "optimum-quanto", "torchao",
                 "accelerate", "gguf", "numpy", "polars", "pyarrow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _file_mode() -> int:
    # mkstemp creates 0600 files; dumps are shared like any other output: 0666 & ~umask.
    # Read the umask without changing it where the OS allows (os.umask is process-wide).
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


def temp_path(final: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
    finally:
        os.close(fd)
    return Path(name)


def atomic_write_bytes(final: Path, data: bytes) -> None:
    """Write ``data`` to ``final`` via temp file + fsync + rename."""
    final = Path(final)
    tmp = temp_path(final)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def atomic_write_parquet(final: Path, df: Any) -> tuple[int, str]:
    """Write a polars DataFrame atomically; returns (bytes, sha256)."""
    import io

    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=False)
    data = buf.getvalue()
    atomic_write_bytes(final, data)
    return len(data), hashlib.sha256(data).hexdigest()


def write_manifest(dump_dir: Path, manifest: dict[str, Any]) -> None:
    data = json.dumps(manifest, indent=1, ensure_ascii=False, sort_keys=False, allow_nan=False).encode("utf-8")
    atomic_write_bytes(Path(dump_dir) / MANIFEST, data + b"\n")


def read_manifest(dump_dir: Path) -> dict[str, Any]:
    """Parse and check ``manifest.json``; DumpError names file and field on failure."""
    path = Path(dump_dir) / MANIFEST
    if not Path(dump_dir).is_dir():
        raise DumpError(f"{dump_dir}: not a directory (expected a qfair dump)")
    if not path.is_file():
        raise DumpError(f"{path}: missing (expected a qfair dump's manifest.json)")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DumpError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(m, dict):
        raise DumpError(f"{path}: top level is {type(m).__name__}, expected an object")
    if m.get("format") != FORMAT:
        raise DumpError(f"{path}: field 'format' is {m.get('format')!r}, expected {FORMAT!r}")
    for key in REQUIRED_KEYS:
        if key not in m:
            raise DumpError(f"{path}: field {key!r} missing")
    fv = m["format_version"]
    if not isinstance(fv, int) or fv < 1 or fv > FORMAT_VERSION:
        raise DumpError(f"{path}: field 'format_version' is {fv!r}, expected an integer 1..{FORMAT_VERSION}")
    if m["status"] not in ("partial", "complete"):
        raise DumpError(f"{path}: field 'status' is {m['status']!r}, expected 'partial' or 'complete'")
    st = m["storage"]
    if not isinstance(st, dict) or st.get("mode") not in STORE_MODES or st.get("dtype") not in STORE_DTYPES:
        raise DumpError(f"{path}: field 'storage' is {st!r}, expected mode in {STORE_MODES} and dtype in {STORE_DTYPES}")
    if not isinstance(m["shards"], list):
        raise DumpError(f"{path}: field 'shards' is {type(m['shards']).__name__}, expected a list")
    if not isinstance(m["vocab_size"], int) or m["vocab_size"] <= 0:
        raise DumpError(f"{path}: field 'vocab_size' is {m['vocab_size']!r}, expected a positive integer")
    return m


# ---------------------------------------------------------------------------
# table schemas (polars); fixed so that every run writes identical bytes
# ---------------------------------------------------------------------------

def examples_schema() -> dict[str, Any]:
    import polars as pl

    return {
        "example_id": pl.Utf8, "task": pl.Utf8, "doc_index": pl.Int64, "group": pl.Utf8,
        "label": pl.Int64, "n_choices": pl.Int64, "context": pl.Utf8,
        "choices": pl.List(pl.Utf8), "labels": pl.List(pl.Int64), "extras": pl.Utf8,
    }


def choices_schema() -> dict[str, Any]:
    import polars as pl

    return {
        "task": pl.Utf8, "example_id": pl.Utf8, "doc_index": pl.Int64, "choice": pl.Int64,
        "loglik": pl.Float64, "n_tokens": pl.Int64, "n_chars": pl.Int64, "n_bytes": pl.Int64,
        "is_greedy": pl.Boolean, "first_row": pl.Int64, "n_rows": pl.Int64,
    }


def tokens_schema() -> dict[str, Any]:
    import polars as pl

    return {
        "row": pl.Int64, "task": pl.Utf8, "example_id": pl.Utf8, "choice": pl.Int64, "pos": pl.Int64,
        "target": pl.Int64, "logprob": pl.Float32, "entropy": pl.Float32, "max_logprob": pl.Float32,
        "argmax": pl.Int64, "rank": pl.Int64,
    }
