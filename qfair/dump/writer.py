"""Writing a dump: :class:`DumpWriter`, the one writer of every dump kind.

A producer (``qfair dump``, an importer, a test) creates a writer with the
dump's kind, its examples table and what the manifest records (model,
tokenizer, tasks, options), then adds the examples in order, each with its
per-example table records and, when logits are stored, its rows::

    w = DumpWriter(out, kind="choices_only", examples=examples, vocab_size=V,
                   tokenizer={"vocab_size": V}, tasks=[{"name": "piqa", "kind": "multiple_choice"}],
                   store="none")
    for i in range(w.start, w.stop):                # w.start > 0 after a resume
        w.add({"choices": {...one example's columns...}})
    w.close()                                        # tables written, manifest complete

Layout and guarantees:

- examples are cut into shards at example boundaries once a shard holds at
  least ``shard_rows`` rows, so the cut points depend only on the data and a
  resumed run writes exactly the files an uninterrupted one does. When the
  rows of every example are known in advance (``rows_per_example``) the plan
  is recorded in the manifest and checked on resume;
- a background thread streams each shard's rows into ``logits/.NNNNN.npy.*.tmp``
  (hashing them on the way), then flushes, fsyncs and renames it into place,
  writes the shard's table parts (``parts/NNNNN.<table>.parquet``) the same
  way and rewrites the manifest atomically, with size and sha256 of each file;
- ``close()`` concatenates the parts into the final tables and marks the
  manifest ``complete``; a failure (disk full, ...) is re-raised in the
  producer as a one-line :class:`DumpError` and everything finished before it
  stays listed in the manifest, so ``resume=True`` can finish the dump;
- every table is checked against its schema (:mod:`qfair.dump.tables`).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import queue
import shutil
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qfair.dump import DumpError
from qfair.dump import manifest as mf
from qfair.dump import tables as tb
from qfair.dump.kinds import get_kind
from qfair.fsutil import DIGESTS, file_digest, fsync_dir, sha256_file, temp_path
from qfair.lock import LOCK_NAME, lock_dir

__all__ = ["DumpWriter", "ShardPlan", "plan_shards", "split_plans", "to_storage", "to_topk", "finish_dump", "writing",
           "check_unique_ids"]

# run options that may differ between an interrupted run and its resume
RESUME_FREE = ("resume", "overwrite", "progress", "out", "cache_dir", "offload_folder", "max_memory")
# storage fields that must match on resume (the totals are only known at the end without a plan)
_STORAGE_STATIC = ("mode", "dtype", "values", "npy_dtype", "shard_rows")


@dataclass
class ShardPlan:
    index: int
    ex_start: int  # first example (global position) in the shard
    ex_end: int  # one past the last
    first_row: int  # global row of the shard's first row
    rows: int | None  # None: not known until the shard is complete

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "examples": [self.ex_start, self.ex_end],
                "first_row": self.first_row, "rows": self.rows}


def plan_shards(rows_per_example: Sequence[int], shard_rows: int) -> list[ShardPlan]:
    """Cut examples into shards at example boundaries, each >= shard_rows rows
    (except the last). The writer applies the same rule on the fly when the
    rows are not known in advance."""
    if shard_rows < 1:
        raise DumpError(f"--shard-rows must be >= 1, got {shard_rows}")
    plans: list[ShardPlan] = []
    start = first_row = acc = 0
    for i, r in enumerate(rows_per_example):
        acc += r
        if acc >= shard_rows:
            plans.append(ShardPlan(len(plans), start, i + 1, first_row, acc))
            first_row += acc
            start, acc = i + 1, 0
    if start < len(rows_per_example):
        plans.append(ShardPlan(len(plans), start, len(rows_per_example), first_row, acc))
    return plans


def to_storage(rows: Any, dtype: str) -> np.ndarray:
    """Rows ``[n, vocab]`` (numpy, or a torch tensor on any device) in the stored
    dtype: f16 / f32 as IEEE values, bf16 as its raw uint16 bit patterns
    (round to nearest even, as torch converts)."""
    want = np.dtype(mf.NPY_DTYPES[dtype])
    if hasattr(rows, "detach"):  # a torch tensor: convert with torch (no extra float64 copy)
        import torch

        t = rows.detach()
        if dtype == "f16":
            return t.to(torch.float16).cpu().contiguous().numpy()
        if dtype == "f32":
            return t.to(torch.float32).cpu().contiguous().numpy()
        return t.to(torch.bfloat16).cpu().contiguous().view(torch.int16).numpy().view(np.uint16)
    a = np.asarray(rows)
    if a.dtype == want:
        return np.ascontiguousarray(a)
    if dtype != "bf16":
        return np.ascontiguousarray(a.astype(want))
    bits = np.ascontiguousarray(a.astype(np.float32)).view(np.uint32)
    nan = np.isnan(a.astype(np.float32))
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(nan, np.uint16(0x7FC0), rounded)


def to_topk(rows: Any, k: int, dtype: str) -> np.ndarray:
    """Top-K records (:func:`qfair.dump.manifest.topk_record`) of log-softmax rows
    ``[n, vocab]`` (numpy, or a torch tensor on any device; computed there).

    The K entries are chosen and ordered on the values as stored (rounded to
    ``dtype``) by (value descending, token id ascending), the order the C++
    core uses for its top-k, so top-k sets read from the records equal those
    of the stored full rows for every k <= K. ``tail`` is the log of the
    probability outside the K, summed from the unrounded rows (``-inf`` when
    nothing is left). A row holding NaN gives NaN values and tail (ids 0..K-1).
    """
    import torch

    x = rows.detach() if hasattr(rows, "detach") else torch.from_numpy(np.ascontiguousarray(rows))
    if x.dim() != 2:
        raise DumpError(f"rows of shape {tuple(x.shape)}, expected [n, vocab]")
    if x.dtype == torch.uint16 or (not hasattr(rows, "detach") and np.asarray(rows).dtype == np.uint16):
        raise DumpError("top-K records are made from float rows, not raw bf16 bit patterns")
    x = x.float()
    n, vocab = x.shape
    if not 1 <= k <= vocab:
        raise DumpError(f"--store topk:{k} needs 1 <= K <= the vocabulary ({vocab})")
    if dtype == "f16":
        r = x.to(torch.float16).float()
    elif dtype == "bf16":
        r = x.to(torch.bfloat16).float()
    else:
        r = x
    nan = torch.isnan(r).any(dim=1)
    r_sel = r.masked_fill(nan[:, None], 0.0) if bool(nan.any()) else r
    _, idx = torch.topk(r_sel, k, dim=1, largest=True, sorted=False)
    # ties at the K-th value: keep the lowest ids, as the core's (-value, id) order does
    thr = r_sel.gather(1, idx).min(dim=1, keepdim=True).values
    n_tied = (r_sel == thr).sum(dim=1)
    n_above = (r_sel > thr).sum(dim=1)
    fix = torch.nonzero(n_above + n_tied > k).flatten().tolist()
    for i in fix:
        above = torch.nonzero(r_sel[i] > thr[i]).flatten()
        tied = torch.nonzero(r_sel[i] == thr[i]).flatten()[: k - above.numel()]
        idx[i] = torch.cat([above, tied])
    # order: value descending, id ascending
    idx, _ = torch.sort(idx, dim=1)
    order = torch.sort(r_sel.gather(1, idx), dim=1, descending=True, stable=True).indices
    idx = idx.gather(1, order)
    vals = r.gather(1, idx)
    tail = torch.logsumexp(x.scatter(1, idx, float("-inf")), dim=1)
    rec = np.empty(n, dtype=mf.topk_record(dtype, k))
    rec["logprob"] = to_storage(vals, dtype)
    rec["id"] = idx.to(torch.int32).cpu().numpy()
    rec["tail"] = tail.cpu().numpy().astype(np.float32)
    if bool(nan.any()):
        m = nan.cpu().numpy()
        rec["logprob"][m] = to_storage(np.full((int(m.sum()), k), np.nan, dtype=np.float32), dtype)
        rec["id"][m] = np.arange(k, dtype=np.int32)
        rec["tail"][m] = np.nan
    return rec


def _describe_oserror(e: OSError, path: Path) -> str:
    if e.errno == errno.ENOSPC:
        return f"disk full while writing {path}"
    if e.errno == errno.EDQUOT:
        return f"disk quota exceeded while writing {path}"
    return f"cannot write {path}: {e.strerror or e}"


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                                               "shape": tuple(shape)})
    return hdr.getvalue()


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The dotted path of the first difference between two JSON-like values (None: equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{path}{k}"
            d = first_difference(a[k], b[k], f"{path}{k}.")
            if d is not None:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path.rstrip('.')} (length {len(a)} vs {len(b)})"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{path}{i}.")
            if d is not None:
                return d
        return None
    return None if a == b else path.rstrip(".")


class ShardWriter:
    """The background thread that writes shards. Messages, in order per shard:
    ``begin(plan)``, ``rows(array)``..., ``end(table_columns, extra)``."""

    def __init__(self, dump_dir: Path, manifest: dict[str, Any], *, store: str, dtype: str, vocab: int,
                 tables: Sequence[str], max_queue: int = 64):
        self.dir = Path(dump_dir)
        self.manifest = manifest  # owned by the writer thread once started
        self.store = mf.parse_store(store)[0]  # full | topk | none
        self.vocab = int(vocab)
        self.np_dtype = mf.shard_dtype(manifest["storage"]) if self.store != "none" else np.dtype(mf.NPY_DTYPES[dtype])
        # shape of one row in a shard: [vocab] values, or one top-K record
        self.row_shape: tuple[int, ...] = (self.vocab,) if self.store == "full" else ()
        self.tables = tuple(tables)
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
        self._error: BaseException | None = None
        self._error_msg: str | None = None
        self._thread = threading.Thread(target=self._run, name="qfair-shard-writer", daemon=True)
        # per-shard state (writer thread only)
        self._plan: ShardPlan | None = None
        self._fh: Any = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._hashes: dict[str, Any] | None = None
        self._header_len = 0
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

    def end(self, table_columns: dict[str, dict[str, list]], extra: dict[str, Any]) -> None:
        self._put(("end", table_columns, extra))

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
                continue  # drain after a failure; the producer sees it on its next put
            try:
                if kind == "begin":
                    self._begin(item[1])
                elif kind == "rows":
                    self._rows(item[1])
                elif kind == "end":
                    self._end(item[1], item[2])
            except OSError as e:
                self._error = e
                self._error_msg = _describe_oserror(e, Path(e.filename) if e.filename else (self._final or self.dir))
                self._discard()
            except BaseException as e:  # noqa: BLE001 - re-raised in the producer
                self._error = e
                self._error_msg = str(e) if isinstance(e, DumpError) else f"writing {self._final or self.dir}: {e}"
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
        self._final = self.dir / mf.LOGITS_DIR / mf.shard_name(plan.index)
        self._tmp = temp_path(self._final)
        self._fh = open(self._tmp, "wb")
        # the row count goes into the header: known from the plan, or patched in at the end
        h = _npy_header(self.np_dtype, (plan.rows or 0, *self.row_shape))
        self._header_len = len(h)
        self._write(h)
        # both digests as the bytes go out; with the row count unknown the header
        # is patched at the end, and the finished file is hashed instead
        self._hashes = {name: make(h) for name, make in DIGESTS.items()} if plan.rows is not None else None
        self._bytes = len(h)

    def _rows(self, arr: np.ndarray) -> None:
        assert self._plan is not None
        if self.store == "none":
            return
        if arr.dtype != self.np_dtype or arr.shape[1:] != self.row_shape:
            raise DumpError(f"rows of dtype {arr.dtype} shape {arr.shape}, expected {self.np_dtype} "
                            f"[*{''.join(f', {d}' for d in self.row_shape)}]")
        mv = memoryview(np.ascontiguousarray(arr)).cast("B")
        self._write(mv)
        if self._hashes is not None:
            for h in self._hashes.values():
                h.update(mv)
        self._bytes += mv.nbytes
        self._written += arr.shape[0]

    def _finish_shard_file(self, plan: ShardPlan) -> dict[str, str]:
        """Flush, fsync and rename the shard into place; its digests by manifest key."""
        if plan.rows is None:  # patch the header with the final row count, then hash the file
            plan.rows = self._written
            h = _npy_header(self.np_dtype, (plan.rows, *self.row_shape))
            if len(h) != self._header_len:  # pragma: no cover - needs > 10^15 rows
                raise DumpError(f"shard {plan.index}: header length changed")
            self._fh.seek(0)
            self._write(h)
        elif self._written != plan.rows:
            raise DumpError(f"shard {plan.index} got {self._written} rows, planned {plan.rows}")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        if self._hashes is not None:
            digests = {name: h.hexdigest() for name, h in self._hashes.items()}
        else:
            digests = {name: file_digest(self._tmp, name) for name in DIGESTS}
        os.replace(self._tmp, self._final)
        self._tmp = None
        fsync_dir(self._final.parent)
        return digests

    def _end(self, table_columns: dict[str, dict[str, list]], extra: dict[str, Any]) -> None:
        plan = self._plan
        assert plan is not None
        if self.store != "none":
            digests = self._finish_shard_file(plan)
            entry: dict[str, Any] = plan.to_json()
            entry.update({"file": f"{mf.LOGITS_DIR}/{self._final.name}", "bytes": self._bytes, **digests})
        else:
            if plan.rows is None:
                plan.rows = 0
            entry = plan.to_json()
            entry.update({"file": None, "bytes": 0, **{name: None for name in DIGESTS}})
        parts = {}
        for name in self.tables:
            df = tb.frame(name, table_columns[name], where=f"shard {plan.index}")
            rel = f"{mf.PARTS_DIR}/{plan.index:05d}.{name}.parquet"
            self._final = self.dir / rel
            nbytes, sha = mf.atomic_write_parquet(self._final, df)
            parts[name] = {"file": rel, "rows": df.height, "bytes": nbytes, "sha256": sha}
        entry["parts"] = parts
        entry.update(extra)
        self.manifest["shards"].append(entry)
        self._final = self.dir / mf.MANIFEST
        mf.write_manifest(self.dir, self.manifest)
        self._final = None
        self._plan = None


class DumpWriter:
    """Create (or resume) a dump directory and write it example by example.

    ``examples``: the examples table (a polars DataFrame or a dict of columns
    with exactly its schema), one row per example in the order they will be
    added. ``rows_per_example``: rows each example will add (optional; when
    given, shards are planned up front and every ``add`` is checked against
    it). ``tokenizer``: the tokenizer fingerprint that alignment checks
    compare; ``tasks``: one dict per task (``name``, ``kind``, ...);
    ``model``: what was loaded; ``config``: the run's options (checked on
    resume, except :data:`RESUME_FREE`); ``info``: further manifest sections
    (e.g. the scoring rules); ``threads``: the compute threads the producer
    used (recorded as ``run.threads``, free to differ on resume). The writer
    holds an exclusive lock on ``out`` (:mod:`qfair.lock`) until ``close()``
    or ``abort()``: a second writer on the same directory stops at once.
    ``inputs`` (option -> path): what the producer reads; an ``out`` that
    resolves to one of them, or holds one, is refused before anything is
    deleted. ``resumable=False``: the producer has no --resume (messages do
    not offer it). See the module doc for the guarantees.
    """

    def __init__(self, out: str | os.PathLike, *, kind: str = "multiple_choice", examples: Any,
                 vocab_size: int, tokenizer: Mapping[str, Any] | None, tasks: Sequence[Mapping[str, Any]],
                 model: Mapping[str, Any] | None = None, rows_per_example: Sequence[int] | None = None,
                 store: str = "full", store_dtype: str = "f16", shard_rows: int = 4096,
                 config: Mapping[str, Any] | None = None, info: Mapping[str, Any] | None = None,
                 seed: int = 0, counts: Mapping[str, int] | None = None, resume: bool = False,
                 overwrite: bool = False, max_queue: int = 64, threads: int | None = None,
                 part: tuple[int, int] | None = None, resumable: bool = True,
                 inputs: Mapping[str, Any] | None = None):
        self.out = Path(out)
        self.resumable = resumable  # False: the producer has no --resume (an import); messages do not offer it
        self.kind = get_kind(kind)
        self._check_storage(str(store), store_dtype, shard_rows, vocab_size)
        self._check_examples(examples)
        self._plan_shards(rows_per_example, part)
        fresh = self._fresh_manifest(model=model, tokenizer=tokenizer, tasks=tasks, info=info, counts=counts,
                                     config=config, seed=seed, threads=threads)
        self._refuse_before_touching(resume, overwrite, inputs, fresh)
        self._take_lock()
        try:
            self._open(resume, overwrite, fresh, max_queue)
        except BaseException:
            self._release()
            raise

    def _check_storage(self, store: str, store_dtype: str, shard_rows: int, vocab_size: Any) -> None:
        """--store, --store-dtype, --shard-rows and the vocabulary, checked and kept."""
        mode, topk = mf.parse_store(store)
        if store_dtype not in mf.STORE_DTYPES:
            raise DumpError(f"--store-dtype is {store_dtype!r}, expected one of {', '.join(mf.STORE_DTYPES)}")
        if mode != "none" and not self.kind.stores_rows:
            raise DumpError(f"a {self.kind.name!r} dump stores no logits rows; use store='none'")
        if shard_rows < 1:
            raise DumpError(f"--shard-rows must be >= 1, got {shard_rows}")
        if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
            raise DumpError(f"vocab_size is {vocab_size!r}, expected a positive integer")
        if topk is not None and topk > int(vocab_size):
            raise DumpError(f"--store {store}: K = {topk} exceeds the vocabulary of {int(vocab_size)} tokens")
        self.store, self.store_dtype, self.vocab = store, store_dtype, int(vocab_size)
        self.store_mode, self.topk = mode, topk
        self.shard_rows = int(shard_rows)

    def _check_examples(self, examples: Any) -> None:
        """The examples table: its schema, and every example_id present once."""
        self.examples = examples if hasattr(examples, "schema") else tb.frame("examples", examples)
        tb.check_frame("examples", self.examples, f"{self.out / mf.EXAMPLES}")
        self.n_examples = self.examples.height
        ids = self.examples["example_id"]
        if ids.null_count() or ids.n_unique() != self.n_examples:
            dup = ids.filter(ids.is_duplicated()).head(1).to_list()
            raise DumpError(f"{self.out / mf.EXAMPLES}: field 'example_id' {dup[0] if dup else None!r} "
                            "occurs twice (or is missing)")

    def _plan_shards(self, rows_per_example: Sequence[int] | None, part: tuple[int, int] | None) -> None:
        """The shard plan (when the rows per example are known up front) and, for one
        part of a data-parallel dump, its range of shards."""
        self.plans: list[ShardPlan] | None = None
        self._rows_per_example = None if rows_per_example is None else [int(r) for r in rows_per_example]
        if self._rows_per_example is not None:
            if len(self._rows_per_example) != self.n_examples:
                raise DumpError(f"rows_per_example has {len(self._rows_per_example)} entries for "
                                f"{self.n_examples} examples")
            self.plans = plan_shards(self._rows_per_example, self.shard_rows)
        # a part of a data-parallel dump: the shards [a, b) of the plan (split_plans), written into out
        self.part = None if part is None else (int(part[0]), int(part[1]))
        self.shard_range: tuple[int, int] | None = None
        if self.part is not None:
            if self.plans is None:
                raise DumpError("a data-parallel dump needs its shards planned up front (rows_per_example); this "
                                f"{self.kind.name!r} dump cuts its shards on the fly: run it in one process")
            r, world = self.part
            if not 0 <= r < world:
                raise DumpError(f"part {r} of {world}: expected 0 <= rank < world size")
            self.shard_range = split_plans(self.plans, world)[r]

    def _fresh_manifest(self, *, model: Mapping[str, Any] | None, tokenizer: Mapping[str, Any] | None,
                        tasks: Sequence[Mapping[str, Any]], info: Mapping[str, Any] | None,
                        counts: Mapping[str, int] | None, config: Mapping[str, Any] | None, seed: int,
                        threads: int | None) -> dict[str, Any]:
        """The manifest of this dump before its first shard (status partial)."""
        store, store_dtype, mode, topk = self.store, self.store_dtype, self.store_mode, self.topk
        total = None if self._rows_per_example is None else sum(self._rows_per_example)
        run_config = {k: v for k, v in dict(config or {}).items() if k not in RESUME_FREE}
        run_config.update({"store": store, "store_dtype": store_dtype, "shard_rows": self.shard_rows, "seed": seed})
        storage = {"mode": mode, "dtype": store_dtype, "values": "log_softmax",
                   "npy_dtype": mf.NPY_DTYPES[store_dtype] if mode != "none" else None,
                   **({"k": topk} if topk is not None else {}),
                   "shard_rows": self.shard_rows,
                   "n_rows": (total if mode != "none" else 0) if total is not None else None,
                   "n_tokens": total, "n_shards": None if self.plans is None else len(self.plans)}
        fresh = {
            "format": mf.FORMAT, "format_version": mf.FORMAT_VERSION, "kind": self.kind.name, "status": "partial",
            "created_by": f"qfair {_qfair_version()}", "model": _json_copy(model or {}),
            "tokenizer": _json_copy(tokenizer) if tokenizer is not None else None, "vocab_size": self.vocab,
            "tasks": _json_copy(list(tasks)), **_json_copy(dict(info or {})), "storage": storage,
            "plan": None if self.plans is None else [p.to_json() for p in self.plans], "shards": [],
            "tables": {}, "counts": {"examples": self.n_examples, **dict(counts or {}), "nonfinite_rows": 0},
            "run": {"config": _json_copy(run_config), "seed": seed, "start_time": mf.now_iso(), "end_time": None,
                    **({"threads": int(threads)} if threads is not None else {})},
            "libraries": _library_versions(),
        }
        if self.shard_range is not None:
            import socket

            fresh["part"] = {"rank": self.part[0], "world_size": self.part[1], "shards": list(self.shard_range),
                             "host": socket.gethostname(), "done": False}
        return fresh

    def _refuse_before_touching(self, resume: bool, overwrite: bool, inputs: Mapping[str, Any] | None,
                                fresh: dict[str, Any]) -> None:
        """What is refused before the directory is touched: --resume with --overwrite,
        an out that is (or holds) an input, a manifest JSON cannot hold."""
        if resume and overwrite:
            raise DumpError("--resume and --overwrite exclude each other")
        if inputs:  # the producer's inputs (option -> path): out must be none of them, nor hold one
            from qfair.fsutil import PathError, check_not_input

            try:
                check_not_input(self.out, dict(inputs))
            except PathError as e:
                raise DumpError(str(e)) from None
        bad = mf.unstorable(fresh)
        if bad is not None:
            raise DumpError(f"{self.out / mf.MANIFEST}: field {bad!r} is not a finite number; a manifest (JSON) "
                            "cannot hold it")

    def _take_lock(self) -> None:
        """One writer per directory: a second process stops here (qfair.lock), and so
        does a second writer of this process."""
        self._lock: Any = lock_dir(self.out, "dump")
        other = getattr(self._lock, "writer", None)
        if other is not None and other() is not None:  # the lock is re-entrant within a process; writers are not
            self._release()
            raise DumpError(f"{self.out}: another DumpWriter of this process is writing this dump; close() or "
                            "abort() it first")
        self._lock.writer = weakref.ref(self)

    def _open(self, resume: bool, overwrite: bool, fresh: dict[str, Any], max_queue: int) -> None:
        store, store_dtype = self.store, self.store_dtype
        old = self._prepare_dir(resume, overwrite)
        self.already_complete = old is not None and old["status"] == "complete"
        self.resumed_from_shard: int | None = None
        self._closed = False
        if old is not None and self.shard_range is not None and (old.get("part") or {}).get("done"):
            self.already_complete = True  # this part is written; the merge is what remains
        if self.already_complete:
            self.manifest = old
            self._check_resumable(old, fresh)
            self.start = self.stop
            self._release()  # nothing to write
            return
        if old is not None:
            self._check_resumable(old, fresh)
            self.start = self._verify_done_shards(old)
            self._clean_strays(old)
            self.manifest = old
            self.manifest["status"] = "partial"
            run = self.manifest.setdefault("run", {})
            run.setdefault("resumed_at", []).append(mf.now_iso())
            if fresh["run"].get("threads") is not None:
                run.setdefault("resumed_threads", []).append(fresh["run"]["threads"])
            self.resumed_from_shard = len(old["shards"])
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            mf.write_marker(self.out)  # first: a run that fails from here on leaves a dump --overwrite can clean
            nbytes, sha = mf.atomic_write_parquet(self.out / mf.EXAMPLES, self.examples)
            fresh["tables"]["examples"] = {"file": mf.EXAMPLES, "rows": self.n_examples, "bytes": nbytes,
                                           "sha256": sha}
            self.manifest = fresh
            self.start = self._range_start()
        (self.out / mf.PARTS_DIR).mkdir(exist_ok=True)
        if self.store_mode != "none":
            (self.out / mf.LOGITS_DIR).mkdir(exist_ok=True)
        mf.write_manifest(self.out, self.manifest)
        # the shard being filled
        done = self.manifest["shards"]
        first = self.shard_range[0] if self.shard_range is not None else 0
        self._shard_index = first + len(done)
        if done:
            self._next_row = done[-1]["first_row"] + done[-1]["rows"]
        else:
            self._next_row = self.plans[first].first_row if self.plans is not None and first < len(self.plans) else 0
        self._next = self.start
        self._shard_rows_acc = 0
        self._shard: ShardPlan | None = None
        self._cols: dict[str, dict[str, list]] = {}
        self._extra: dict[str, Any] = {}
        self._thread = ShardWriter(self.out, self.manifest, store=store, dtype=store_dtype, vocab=self.vocab,
                                   tables=self.kind.tables, max_queue=max_queue).start()

    @property
    def stop(self) -> int:
        """One past the last example this writer adds (``n_examples``, or the end of its part)."""
        if self.shard_range is None:
            return self.n_examples
        a, b = self.shard_range
        return self.plans[b - 1].ex_end if b > a else self._range_start()

    @property
    def first_example(self) -> int:
        """The first example this writer adds in a fresh run (0, or the start of its part)."""
        return self._range_start()

    def _range_start(self) -> int:
        if self.shard_range is None:
            return 0
        a = self.shard_range[0]
        return self.plans[a].ex_start if a < len(self.plans) else self.n_examples

    # -- directory and resume ----------------------------------------------------
    def _prepare_dir(self, resume: bool, overwrite: bool) -> dict[str, Any] | None:
        """The existing manifest when resuming, else None (a fresh directory)."""
        out = self.out
        if resume and overwrite:
            raise DumpError("--resume and --overwrite exclude each other")
        if out.exists() and not out.is_dir():
            raise DumpError(f"{out}: exists and is not a directory")
        if resume:
            if not (out / mf.MANIFEST).is_file():
                raise DumpError(f"{out / mf.MANIFEST}: missing, nothing to resume (run without --resume)")
            return mf.read_manifest(out)
        if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
            if not overwrite:
                how = "--resume to finish it or --overwrite to replace it" if self.resumable else \
                    "--overwrite to replace it"
                raise DumpError(f"{out}: directory exists and is not empty (use {how})")
            if not mf.is_dump_dir(out):
                raise DumpError(f"{out}: not a qfair dump (no manifest.json with format {mf.FORMAT!r}, no "
                                f"{mf.MARKER}); refusing to delete it")
            for p in out.iterdir():  # everything but the lock this writer holds and the marker
                if p.name in (LOCK_NAME, mf.MARKER):
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        return None

    def _check_resumable(self, old: dict[str, Any], fresh: dict[str, Any]) -> None:
        where = self.out / mf.MANIFEST
        if old.get("kind", "multiple_choice") != fresh["kind"]:
            raise DumpError(f"{where}: field 'kind' is {old.get('kind')!r}, this run writes {fresh['kind']!r}")
        checks = [("run.config", old.get("run", {}).get("config"), fresh["run"]["config"]),
                  ("tokenizer", old.get("tokenizer"), fresh["tokenizer"]),
                  ("tasks", old.get("tasks"), fresh["tasks"]),
                  ("storage", {k: (old.get("storage") or {}).get(k) for k in _STORAGE_STATIC},
                   {k: fresh["storage"][k] for k in _STORAGE_STATIC}),
                  ("plan", old.get("plan"), fresh["plan"]),
                  ("part", {k: v for k, v in (old.get("part") or {}).items() if k not in ("done", "host")},
                   {k: v for k, v in (fresh.get("part") or {}).items() if k not in ("done", "host")})]
        for key, old_val, new_val in checks:
            diff = first_difference(old_val, new_val)
            if diff is not None:
                raise DumpError(f"{where}: field '{key}{'.' + diff if diff else ''}' differs from this run's; "
                                "--resume needs the same model, tasks and options")
        buf = io.BytesIO()
        self.examples.write_parquet(buf, compression="zstd", statistics=False)
        want = (old.get("tables") or {}).get("examples", {}).get("sha256")
        path = self.out / mf.EXAMPLES
        if not path.is_file() or sha256_file(path) != want or hashlib.sha256(buf.getvalue()).hexdigest() != want:
            raise DumpError(f"{path}: differs from this run's examples; cannot resume (use --overwrite)")

    def _verify_done_shards(self, m: dict[str, Any]) -> int:
        """Check every shard listed in a partial manifest; returns the first example still to add."""
        nxt = self._range_start()
        for entry in m["shards"]:
            files = []
            if entry.get("file"):
                files.append((entry["file"], entry["bytes"], entry))
            for part in (entry.get("parts") or {}).values():
                files.append((part["file"], part["bytes"], part))
            for rel, nbytes, listed in files:
                p = self.out / rel
                if not p.is_file():
                    raise DumpError(f"{p}: listed in manifest.json shards[{entry['index']}] but missing; "
                                    "cannot resume (use --overwrite)")
                if p.stat().st_size != nbytes:
                    raise DumpError(f"{p}: {p.stat().st_size} bytes, manifest.json says {nbytes}; cannot resume "
                                    "(use --overwrite)")
                key, want = mf.verifying_digest(listed)
                if file_digest(p, key) != want:
                    raise DumpError(f"{p}: {key} differs from manifest.json; cannot resume (use --overwrite)")
            nxt = int(entry["examples"][1])
        return nxt

    def _clean_strays(self, m: dict[str, Any]) -> None:
        """Remove temp files and shard files not listed in the manifest."""
        listed = {self.out / e["file"] for e in m["shards"] if e.get("file")}
        for e in m["shards"]:
            listed.update(self.out / p["file"] for p in (e.get("parts") or {}).values())
        for sub in (mf.LOGITS_DIR, mf.PARTS_DIR):
            d = self.out / sub
            if d.is_dir():
                for p in d.iterdir():
                    if p not in listed:
                        p.unlink()
        for p in self.out.glob(".*.tmp"):
            p.unlink()

    # -- adding examples ----------------------------------------------------------
    def add(self, tables: Mapping[str, Mapping[str, Sequence[Any]]] | None = None, rows: Any = None, *,
            counts: Mapping[str, int] | None = None) -> None:
        """Add the next example: its records of every per-example table of the
        kind (``{table: {column: values}}``), its logits rows (``[n, vocab]``,
        any float dtype or a torch tensor; ignored with store='none') and
        counters summed per shard and into the manifest (e.g. ``nonfinite_rows``)."""
        if self._closed:
            raise DumpError("add() after close()")
        if self._next >= self.stop:
            raise DumpError(f"add(): all {self.n_examples} examples were added already" if self.shard_range is None
                            else f"add(): every example of this part (up to {self.stop}) was added already")
        tables = dict(tables or {})
        unknown = sorted(set(tables) - set(self.kind.tables))
        if unknown:
            raise DumpError(f"add(): table(s) {', '.join(unknown)} are not part of a {self.kind.name!r} dump "
                            f"(its tables: {', '.join(self.kind.tables)})")
        for name, cols in tables.items():
            schema = tb.table_spec(name).schema()
            extra = [c for c in cols if c not in schema]
            if extra:
                raise DumpError(f"add(): table {name!r} has no column(s) {', '.join(extra)} "
                                f"(its columns: {', '.join(schema)})")
            missing = [c for c in schema if c not in cols]
            lengths = {len(v) for v in cols.values()}
            if missing or len(lengths) > 1:
                raise DumpError(f"add(): table {name!r}: " + (f"column(s) {', '.join(missing)} missing" if missing
                                else "columns differ in length"))
        n_rows = 0
        stored = None
        if rows is not None and self.store_mode != "none":
            shape = tuple(rows.shape)
            if len(shape) != 2 or shape[1] != self.vocab:
                raise DumpError(f"add(): rows of shape {shape}, expected [n, {self.vocab}]")
            stored = to_storage(rows, self.store_dtype) if self.store_mode == "full" else \
                to_topk(rows, self.topk, self.store_dtype)
            n_rows = int(stored.shape[0])
        elif "tokens" in tables:  # store='none': the tokens table still counts the scored tokens
            n_rows = len(next(iter(tables["tokens"].values()), []))
        if self._rows_per_example is not None and n_rows != self._rows_per_example[self._next] \
                and (self.store_mode != "none" or "tokens" in tables):
            raise DumpError(f"add(): example {self._next} has {n_rows} rows, planned {self._rows_per_example[self._next]}")
        if self._shard is None:
            self._open_shard()
        for name in self.kind.tables:
            cols = tables.get(name)
            acc = self._cols[name]
            if cols is None:
                continue
            for c, v in cols.items():
                acc[c].extend(v.tolist() if isinstance(v, np.ndarray) else v)
        if stored is not None and n_rows:
            self._thread.rows(stored)
        for k, v in (counts or {}).items():
            self._extra[k] = self._extra.get(k, 0) + int(v)
        self._shard_rows_acc += n_rows
        self._next += 1
        planned_end = self._shard.ex_end if self.plans is not None else None
        if self._next == planned_end or (planned_end is None and self._shard_rows_acc >= self.shard_rows):
            self._close_shard()

    @property
    def next_row(self) -> int:
        """The global row index the next added row gets (for ``first_row`` / ``row`` columns)."""
        return self._next_row + (self._shard_rows_acc if self._shard is not None else 0)

    def _open_shard(self) -> None:
        if self.plans is not None:
            self._shard = self.plans[self._shard_index]
        else:
            self._shard = ShardPlan(self._shard_index, self._next, self._next, self._next_row, None)
        self._shard_rows_acc = 0
        self._cols = {name: {c: [] for c in tb.table_spec(name).schema()} for name in self.kind.tables}
        self._extra = {"nonfinite_rows": 0}
        self._thread.begin(self._shard)

    def _close_shard(self) -> None:
        plan = self._shard
        assert plan is not None
        if self.plans is None:
            plan.ex_end = self._next
        self._thread.end(self._cols, self._extra)
        self._next_row += self._shard_rows_acc
        self._shard_index += 1
        self._shard = None
        self._shard_rows_acc = 0

    # -- finishing ----------------------------------------------------------------
    def close(self) -> dict[str, Any]:
        """Wait for the last shard, write the final tables, mark the dump complete;
        returns the manifest."""
        if self.already_complete or self._closed:
            self._release()
            return self.manifest
        try:
            if self._shard is not None:
                self._close_shard()
            try:
                self._thread.close()
            except BaseException:
                self._thread.abort()
                raise
            if self._next != self.stop:
                raise DumpError(f"close(): {self._next} of {self.stop} examples were added; the dump stays partial "
                                "(finish it with resume=True)")
            if self.shard_range is not None:  # a part: its shards are written; the merge finishes the dump
                self.manifest["part"]["done"] = True
                self.manifest["run"]["end_time"] = mf.now_iso()
                mf.write_manifest(self.out, self.manifest)
            else:
                finish_dump(self.out, self.manifest, self.kind, self.store_mode)
            self._closed = True
        finally:
            self._release()
        return self.manifest

    def abort(self) -> None:
        """Stop: shards already completed stay on disk and in the manifest (resumable)."""
        if not self.already_complete and not self._closed:
            self._thread.abort()
            self._closed = True
        self._release()

    def _release(self) -> None:
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            if getattr(lock, "writer", None) is not None and lock.writer() is self:
                lock.writer = None
            lock.release()

    def check(self) -> None:
        """Raise the background writer's failure now, if any."""
        if not self.already_complete:
            self._thread.check()

    def __enter__(self) -> DumpWriter:
        return self

    def __exit__(self, exc_type, exc, tb_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

def finish_dump(out: Path, m: dict[str, Any], kind: Any, store_mode: str) -> None:
    """Concatenate every shard's table parts into the final tables, record the
    totals and mark the manifest complete (the parts are removed afterwards)."""
    import polars as pl

    out = Path(out)
    for name in kind.tables:
        spec = tb.table_spec(name)
        parts = [pl.read_parquet(out / e["parts"][name]["file"]) for e in m["shards"]]
        df = pl.concat(parts, how="vertical") if parts else tb.frame(name, {c: [] for c in spec.schema()})
        nbytes, sha = mf.atomic_write_parquet(out / spec.file, df)
        m["tables"][name] = {"file": spec.file, "rows": df.height, "bytes": nbytes, "sha256": sha}
        m["counts"][name] = df.height
    nonfinite = sum(int(e.get("nonfinite_rows", 0)) for e in m["shards"])
    for e in m["shards"]:
        e.pop("parts", None)
    rows = sum(int(e["rows"]) for e in m["shards"])
    st = m["storage"]
    st["n_rows"] = rows if store_mode != "none" else 0
    if st.get("n_tokens") is None:
        st["n_tokens"] = m["counts"].get("tokens", rows)
    st["n_shards"] = len(m["shards"])
    m["counts"]["nonfinite_rows"] = nonfinite
    m["status"] = "complete"
    m["run"]["end_time"] = mf.now_iso()
    mf.write_manifest(out, m)
    shutil.rmtree(out / mf.PARTS_DIR, ignore_errors=True)
    (out / mf.MARKER).unlink(missing_ok=True)  # the complete manifest says what the directory is


def split_plans(plans: Sequence[ShardPlan], world: int) -> list[tuple[int, int]]:
    """Contiguous ranges [a, b) of whole planned shards, one per rank, with about
    equal rows: rank r starts at the shard boundary nearest to r / world of the
    rows (ties: the earlier one). Depends only on the plan and the world size."""
    if world < 1:
        raise DumpError(f"world size {world}: expected >= 1")
    rows = [int(p.rows or 0) for p in plans]
    total = sum(rows)
    bounds = [0]
    acc, s = 0, 0
    for r in range(1, world):
        target = total * r / world
        while s < len(plans) and acc + rows[s] / 2 <= target:
            acc += rows[s]
            s += 1
        bounds.append(max(s, bounds[-1]))
    bounds.append(len(plans))
    return [(bounds[r], bounds[r + 1]) for r in range(world)]


def _json_copy(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def _qfair_version() -> str:
    from qfair import __version__

    return __version__


def _library_versions() -> dict[str, Any]:
    from qfair.provenance import library_versions

    return library_versions()


@contextlib.contextmanager
def writing(writer: DumpWriter, bar: Any = None) -> Iterator[DumpWriter]:
    """A producer's write loop: the dump is closed (tables written, manifest
    complete) when the block ends normally, aborted (finished shards kept, so it
    can be resumed) when it raises; ``bar`` (a progress bar) is closed either way."""
    try:
        yield writer
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()


def check_unique_ids(docs: Sequence[Any]) -> None:
    """DumpError naming the first ``example_id`` that occurs twice among documents
    (checked before the model runs; the writer checks its examples table again)."""
    seen: set[str] = set()
    for d in docs:
        if d.example_id in seen:
            raise DumpError(f"{d.task}: field 'example_id' {d.example_id!r} occurs twice")
        seen.add(d.example_id)
