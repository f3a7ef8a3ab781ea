"""The manifest of a dump: file names, storage constants, reading and writing manifest.json.

Everything a dump holds is JSON, Parquet or ``.npy`` (``allow_pickle=False``).
Files are written atomically (:mod:`qfair.fsutil`): a reader (or a resumed
run) sees either the old file or the complete new one, never a torn write.
Table schemas live in :mod:`qfair.dump.tables`, dump kinds in
:mod:`qfair.dump.kinds`; the format's version, storage modes and dtypes in
:mod:`qfair.dump.layout` (which the schema check reads without reading this
module, so that reading a manifest can call the check).
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from qfair.dump import DumpError
from qfair.dump.layout import (  # noqa: F401 - the format's constants, re-exported (mf.FORMAT, ...)
    FORMAT,
    FORMAT_VERSION,
    NPY_DTYPES,
    REQUIRED_KEYS,
    STORE_DTYPES,
    STORE_MODES,
    TOPK_ID_DTYPE,
    TOPK_TAIL_DTYPE,
    topk_record,
)
from qfair.fsutil import atomic_write_bytes, file_digest

MANIFEST = "manifest.json"
EXAMPLES = "examples.parquet"
CHOICES = "choices.parquet"
TOKENS = "tokens.parquet"
LOGITS_DIR = "logits"
PARTS_DIR = "parts"
#: written first into every dump directory qfair begins (before any table or
#: manifest), so that --overwrite can recognise and clean a dump that failed
#: before its first manifest was written; removed once the dump is complete
MARKER = ".qfair-dump"


def parse_store(store: str) -> tuple[str, int | None]:
    """``full`` | ``none`` | ``topk:K`` -> (mode, K or None); DumpError otherwise."""
    s = str(store).strip()
    if s in ("full", "none"):
        return s, None
    head, sep, k = s.partition(":")
    if head == "topk" and sep and k.strip().isdigit() and int(k) >= 1:
        return "topk", int(k)
    raise DumpError(f"--store is {store!r}, expected full, none or topk:K (K a positive integer, e.g. topk:128)")


def stores_rows(store: str) -> bool:
    """Whether a ``--store`` value keeps a row per scored token (full rows or top-K records)."""
    return parse_store(store)[0] != "none"


def shard_dtype(storage: dict[str, Any]) -> Any:
    """The numpy dtype of a dump's shards: the stored dtype of ``full`` rows
    ([rows, vocab]) or the :func:`topk_record` of ``topk`` shards ([rows])."""
    import numpy as np

    if storage.get("mode") == "topk":
        return topk_record(storage["dtype"], int(storage["k"]))
    return np.dtype(NPY_DTYPES[storage["dtype"]])


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def shard_name(index: int) -> str:
    return f"{index:05d}.npy"


def atomic_write_parquet(final: Path, df: Any) -> tuple[int, str]:
    """Write a polars DataFrame atomically; returns (bytes, sha256)."""
    import io

    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=False)
    data = buf.getvalue()
    atomic_write_bytes(final, data)
    return len(data), hashlib.sha256(data).hexdigest()


def verifying_digest(entry: dict[str, Any]) -> tuple[str, str | None]:
    """(manifest key, hex) of the digest that verifies a listed file: xxh3_128
    where the entry records one (logits shards, from this version on), else
    its sha256. Both catch any changed byte; xxh3 reads at memory speed, so
    checking a dump costs a tenth of what sha256 did."""
    if entry.get("xxh3_128"):
        return "xxh3_128", entry["xxh3_128"]
    return "sha256", entry.get("sha256")


def check_file_digest(path: Path, entry: dict[str, Any], field: str, stop: Any = None) -> None:
    """DumpError unless the file at ``path`` has the digest the manifest entry
    at ``field`` records (:func:`verifying_digest`); an entry with no digest,
    or hashing abandoned by ``stop``, passes."""
    key, want = verifying_digest(entry)
    if want is None:
        return
    got = file_digest(path, key, stop=stop)
    if got is not None and got != want:
        raise DumpError(f"{path}: {key} differs from {MANIFEST} {field}.{key} (corrupt or replaced file)")


def write_manifest(dump_dir: Path, manifest: dict[str, Any]) -> None:
    data = json.dumps(manifest, indent=1, ensure_ascii=False, sort_keys=False, allow_nan=False).encode("utf-8")
    atomic_write_bytes(Path(dump_dir) / MANIFEST, data + b"\n")


def read_manifest(dump_dir: Path) -> dict[str, Any]:
    """Parse ``manifest.json`` and check it against the schema
    (:mod:`qfair.dump.schema`); DumpError names file and field on failure."""
    from qfair.dump.schema import inside, validate_manifest

    dump_dir = Path(dump_dir)
    path = dump_dir / MANIFEST
    if not dump_dir.is_dir():
        raise DumpError(f"{dump_dir}: not a directory (expected a qfair dump)")
    if not path.is_file():
        raise DumpError(f"{path}: missing (expected a qfair dump's manifest.json)")
    inside(dump_dir, MANIFEST, str(dump_dir))
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise DumpError(f"{path}: not valid JSON ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    except OSError as e:
        raise DumpError(f"{path}: cannot be read ({e.strerror or e})") from None
    return validate_manifest(m, path)


def write_marker(dump_dir: Path) -> None:
    """Mark ``dump_dir`` as a directory qfair began (:data:`MARKER`)."""
    atomic_write_bytes(Path(dump_dir) / MARKER, (json.dumps({"format": FORMAT}) + "\n").encode("utf-8"))


def is_dump_dir(d: Path) -> bool:
    """Whether ``d`` is a dump directory qfair began: it holds the marker, or a
    manifest.json of the dump format (dumps written before the marker)."""
    d = Path(d)
    for name in (MARKER, MANIFEST):
        try:
            m = json.loads((d / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and m.get("format") == FORMAT:
            return True
    return False


def unstorable(value: Any, path: str = "") -> str | None:
    """The dotted path of the first value JSON cannot hold (a non-finite float;
    JSON has no NaN or infinity), or None. Checked on a run's options before
    any work, so that a manifest never fails to be written half way."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return path or "(value)"
    if isinstance(value, dict):
        for k, v in value.items():
            bad = unstorable(v, f"{path}.{k}" if path else str(k))
            if bad is not None:
                return bad
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            bad = unstorable(v, f"{path}[{i}]")
            if bad is not None:
                return bad
    return None
