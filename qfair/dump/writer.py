"""Background shard writer.

The scoring loop hands each example's stored rows (already cast to the storage
dtype) and table records to a bounded queue; a single writer thread streams the
rows into ``logits/.NNNNN.npy.*.tmp`` (header first: the shard's row count is
planned in advance), hashes them on the way, and when a shard is complete it
flushes, fsyncs and renames it into place, writes the shard's table parts the
same way, and rewrites the manifest atomically. A failure (disk full, ...) is
kept and re-raised in the scoring thread as a one-line DumpError; everything
finished before it stays on disk and is listed in the manifest, so the dump
can be resumed.
"""
from __future__ import annotations

import errno
import hashlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qfair.dump import DumpError
from qfair.dump import manifest as mf
from qfair.fsutil import fsync_dir


@dataclass
class ShardPlan:
    index: int
    ex_start: int  # first example (global position) in the shard
    ex_end: int  # one past the last
    first_row: int  # global row of the shard's first row
    rows: int

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "examples": [self.ex_start, self.ex_end],
                "first_row": self.first_row, "rows": self.rows}


def plan_shards(rows_per_example: list[int], shard_rows: int) -> list[ShardPlan]:
    """Cut examples into shards at example boundaries, each >= shard_rows rows
    (except the last): shard contents depend only on the data, so an
    interrupted and resumed run cuts exactly where an uninterrupted one does.
    """
    if shard_rows < 1:
        raise DumpError(f"--shard-rows must be >= 1, got {shard_rows}")
    plans: list[ShardPlan] = []
    start = 0
    first_row = 0
    acc = 0
    for i, r in enumerate(rows_per_example):
        acc += r
        if acc >= shard_rows:
            plans.append(ShardPlan(len(plans), start, i + 1, first_row, acc))
            first_row += acc
            start, acc = i + 1, 0
    if start < len(rows_per_example):
        plans.append(ShardPlan(len(plans), start, len(rows_per_example), first_row, acc))
    return plans


def _describe_oserror(e: OSError, path: Path) -> str:
    if e.errno == errno.ENOSPC:
        return f"disk full while writing {path}"
    if e.errno == errno.EDQUOT:
        return f"disk quota exceeded while writing {path}"
    return f"cannot write {path}: {e.strerror or e}"


class ShardWriter:
    """Writes shards in a background thread. Messages, in order per shard:
    ``begin(plan)``, ``rows(array)``..., ``end(choices_cols, tokens_cols)``.
    """

    def __init__(self, dump_dir: Path, manifest: dict[str, Any], *, store: str, dtype: str, vocab: int,
                 max_queue: int = 64, on_shard: Callable[[dict[str, Any]], None] | None = None):
        self.dir = Path(dump_dir)
        self.manifest = manifest  # owned by the writer thread once started
        self.store = store
        self.dtype = dtype
        self.vocab = int(vocab)
        self.np_dtype = np.dtype(mf.NPY_DTYPES[dtype])
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
        self._error: BaseException | None = None
        self._error_msg: str | None = None
        self._thread = threading.Thread(target=self._run, name="qfair-shard-writer", daemon=True)
        self._on_shard = on_shard
        # per-shard state (writer thread only)
        self._plan: ShardPlan | None = None
        self._fh: Any = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._hash: Any = None
        self._written = 0
        self._bytes = 0

    # -- producer side ------------------------------------------------------
    def start(self) -> ShardWriter:
        self._thread.start()
        return self

    def check(self) -> None:
        if self._error is not None:
            raise DumpError(self._error_msg or str(self._error)) from self._error

    def _put(self, item: tuple) -> None:
        while True:
            self.check()
            try:
                self._q.put(item, timeout=0.2)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    self.check()
                    raise DumpError("shard writer stopped unexpectedly") from None

    def begin(self, plan: ShardPlan) -> None:
        self._put(("begin", plan))

    def rows(self, arr: np.ndarray) -> None:
        self._put(("rows", arr))

    def end(self, choices_cols: dict[str, list], tokens_cols: dict[str, list], extra: dict[str, Any]) -> None:
        self._put(("end", choices_cols, tokens_cols, extra))

    def close(self) -> None:
        """Wait for everything queued to be written; re-raise a writer failure."""
        if self._thread.is_alive():
            self._put(("stop",))
            self._thread.join()
        self.check()

    def abort(self) -> None:
        """Stop after writing every shard already completed in the queue; the
        unfinished shard's temp file is removed (nothing listed is lost)."""
        if self._thread.is_alive():
            self._q.put(("abort",))
            self._thread.join()

    # -- writer thread -------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._q.get()
            kind = item[0]
            if kind in ("stop", "abort"):
                self._discard()
                return
            if self._error is not None:
                continue  # drain after a failure; producer sees it on next put
            try:
                if kind == "begin":
                    self._begin(item[1])
                elif kind == "rows":
                    self._rows(item[1])
                elif kind == "end":
                    self._end(item[1], item[2], item[3])
            except OSError as e:
                self._error = e
                self._error_msg = _describe_oserror(e, Path(e.filename) if e.filename else (self._final or self.dir))
                self._discard()
            except BaseException as e:  # noqa: BLE001 - re-raised in the producer
                self._error = e
                self._error_msg = f"writing {self._final or self.dir}: {e}"
                self._discard()

    def _discard(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def _write(self, data: bytes | memoryview) -> None:
        self._fh.write(data)

    def _begin(self, plan: ShardPlan) -> None:
        self._plan = plan
        self._written = 0
        if self.store == "none":
            return
        logits = self.dir / mf.LOGITS_DIR
        self._final = logits / mf.shard_name(plan.index)
        self._tmp = mf.temp_path(self._final)
        self._fh = open(self._tmp, "wb")
        self._hash = hashlib.sha256()
        import io

        hdr = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            hdr, {"descr": self.np_dtype.str, "fortran_order": False, "shape": (plan.rows, self.vocab)})
        h = hdr.getvalue()
        self._write(h)
        self._hash.update(h)
        self._bytes = len(h)

    def _rows(self, arr: np.ndarray) -> None:
        assert self._plan is not None
        if self.store == "none":
            return
        if arr.dtype != self.np_dtype or arr.ndim != 2 or arr.shape[1] != self.vocab:
            raise DumpError(f"internal: rows of dtype {arr.dtype} shape {arr.shape}, expected {self.np_dtype} [*, {self.vocab}]")
        arr = np.ascontiguousarray(arr)
        mv = memoryview(arr).cast("B")
        self._write(mv)
        self._hash.update(mv)
        self._bytes += mv.nbytes
        self._written += arr.shape[0]

    def _end(self, choices_cols: dict[str, list], tokens_cols: dict[str, list], extra: dict[str, Any]) -> None:
        import polars as pl

        plan = self._plan
        assert plan is not None
        entry: dict[str, Any] = plan.to_json()
        if self.store != "none":
            if self._written != plan.rows:
                raise DumpError(f"internal: shard {plan.index} got {self._written} rows, planned {plan.rows}")
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            os.replace(self._tmp, self._final)
            self._tmp = None
            fsync_dir(self._final.parent)
            entry.update({"file": f"{mf.LOGITS_DIR}/{self._final.name}", "bytes": self._bytes,
                          "sha256": self._hash.hexdigest()})
        else:
            entry.update({"file": None, "bytes": 0, "sha256": None})
        parts = self.dir / mf.PARTS_DIR
        ch = pl.DataFrame(choices_cols, schema=mf.choices_schema())
        tk = pl.DataFrame(tokens_cols, schema=mf.tokens_schema())
        ch_name = f"{plan.index:05d}.choices.parquet"
        tk_name = f"{plan.index:05d}.tokens.parquet"
        self._final = parts / ch_name
        ch_bytes, ch_sha = mf.atomic_write_parquet(parts / ch_name, ch)
        self._final = parts / tk_name
        tk_bytes, tk_sha = mf.atomic_write_parquet(parts / tk_name, tk)
        entry["parts"] = {
            "choices": {"file": f"{mf.PARTS_DIR}/{ch_name}", "rows": ch.height, "bytes": ch_bytes, "sha256": ch_sha},
            "tokens": {"file": f"{mf.PARTS_DIR}/{tk_name}", "rows": tk.height, "bytes": tk_bytes, "sha256": tk_sha},
        }
        entry.update(extra)
        self.manifest["shards"].append(entry)
        self._final = self.dir / mf.MANIFEST
        mf.write_manifest(self.dir, self.manifest)
        self._final = None
        self._plan = None
        if self._on_shard is not None:
            self._on_shard(entry)
