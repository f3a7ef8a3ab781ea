"""Reading a dump: ``open_dump(path)``.

Only JSON, Parquet and ``.npy`` with ``allow_pickle=False`` are read, so opening
a dump never executes code. Tables are read lazily on first access; logits
shards are memory-mapped. A partial dump (interrupted run) is readable too: its
choices/tokens come from the table parts of the shards finished so far.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qfair.directio import read_direct
from qfair.dump import DumpError
from qfair.dump import manifest as mf
from qfair.dump import tables as tb
from qfair.dump.kinds import DumpKind, get_kind
from qfair.dump.schema import inside
from qfair.fsutil import StreamedDigest
from qfair.npyio import DirectRead, NpyFormatError, NpyHeader, read_npy_header
from qfair.stages import active_timer

if TYPE_CHECKING:  # polars is imported lazily, when a table is first read
    import polars as pl

__all__ = ["Dump", "open_dump", "DumpError", "digests_in_background"]


class Dump:
    """A dump directory, opened for reading (see module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest: dict[str, Any] = mf.read_manifest(self.path)
        # shard index -> its digest, taken by the stream (set by digests_in_background)
        self._streamed: dict[int, _StreamedShard] = {}

    def __repr__(self) -> str:
        return f"Dump({str(self.path)!r}, status={self.status!r}, rows={self.n_rows})"

    # -- manifest views -------------------------------------------------------
    @property
    def kind(self) -> DumpKind:
        """The dump kind (what tables it has, how its rows align)."""
        return get_kind(self.manifest.get("kind"))

    @property
    def status(self) -> str:
        return self.manifest["status"]

    @property
    def is_complete(self) -> bool:
        return self.status == "complete"

    @property
    def storage_mode(self) -> str:
        """``full`` (vocabulary-wide rows), ``topk`` (top-K records per row) or ``none``."""
        return self.manifest["storage"]["mode"]

    @property
    def has_logits(self) -> bool:
        """Vocabulary-wide rows are stored (``--store full``)."""
        return self.storage_mode == "full"

    @property
    def has_topk(self) -> bool:
        """Top-K records are stored (``--store topk:K``)."""
        return self.storage_mode == "topk"

    @property
    def has_rows(self) -> bool:
        """A row per scored token is stored, full or top-K."""
        return self.storage_mode != "none"

    @property
    def topk(self) -> int | None:
        """K of a top-K dump (None otherwise)."""
        return int(self.manifest["storage"]["k"]) if self.has_topk else None

    @property
    def logits_dtype(self) -> str:
        return self.manifest["storage"]["dtype"]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def n_rows(self) -> int:
        """Rows present (sum over finished shards; 0 with --store none)."""
        if not self.has_rows:
            return 0
        return sum(int(s["rows"]) for s in self.manifest["shards"])

    @property
    def tokenizer_fingerprint(self) -> dict[str, Any]:
        return dict(self.manifest["tokenizer"] or {})

    # -- files -----------------------------------------------------------------
    def file(self, rel: str, field: str) -> Path:
        """The path of a file the manifest lists (``field`` names where), after
        checking that it stays inside the dump directory."""
        real = self.__dict__.get("_real_root")
        if real is None:
            real = self.__dict__["_real_root"] = os.path.realpath(self.path)
        return inside(self.path, rel, f"{self.path / mf.MANIFEST} field '{field}'", real)

    def listed_files(self) -> list[tuple[str, int, dict[str, Any], str]]:
        """(relative path, bytes, manifest entry, manifest field) of every file
        the manifest lists; the entry holds the file's digests
        (:func:`qfair.dump.manifest.verifying_digest`)."""
        m = self.manifest
        out = []
        tables = m.get("tables") or {}
        names = ["examples", *self.kind.tables] if self.is_complete else ["examples"]
        for name in names:
            e = tables.get(name)
            if e is not None:
                out.append((e["file"], e["bytes"], e, f"tables.{name}"))
        for i, s in enumerate(m["shards"]):
            if self.has_rows:
                out.append((s["file"], s["bytes"], s, f"shards[{i}]"))
            if not self.is_complete:
                for name in self.kind.tables:
                    p = s["parts"][name]
                    out.append((p["file"], p["bytes"], p, f"shards[{i}].parts.{name}"))
        return out

    def verify(self, hash: bool = True) -> None:
        """Check every listed file before any work: inside the dump directory,
        present, of the listed size, and (``hash=True``) of the listed digest;
        each logits shard's header against the manifest. DumpError names the
        file and the manifest field on the first mismatch."""
        for rel, nbytes, _entry, field in self.listed_files():
            p = self.file(rel, f"{field}.file")
            if not p.is_file():
                raise DumpError(f"{p}: missing (listed in {mf.MANIFEST} {field})")
            size = p.stat().st_size
            if size != nbytes:
                raise DumpError(f"{p}: {size} bytes, {mf.MANIFEST} {field}.bytes says {nbytes} "
                                "(truncated, corrupt or replaced file)")
        for i in range(len(self.manifest["shards"]) if self.has_rows else 0):
            self._shard_header(i)
        if hash:
            self.verify_digests()

    def verify_digests(self, stop: threading.Event | None = None) -> None:
        """Check every listed file's digest (the sizes are :meth:`verify`'s);
        DumpError names the file and the manifest field on the first mismatch.
        ``stop``: an event that ends the hashing early (no error)."""
        for rel, _nbytes, entry, field in self.listed_files():
            if stop is not None and stop.is_set():
                return
            self.check_digest(rel, entry, field, stop)

    def check_digest(self, rel: str, entry: dict[str, Any], field: str,
                     stop: threading.Event | None = None) -> None:
        """Check one listed file (:meth:`listed_files`) against its digest."""
        mf.check_file_digest(self.file(rel, f"{field}.file"), entry, field, stop)

    def _shard_header(self, i: int) -> tuple[Path, NpyHeader]:
        """Shard ``i``'s path and header, checked against the manifest (dtype, C order, shape, size)."""
        s = self.manifest["shards"][i]
        path = self.file(s["file"], f"shards[{i}].file")
        if not path.is_file():
            raise DumpError(f"{path}: missing (listed in {mf.MANIFEST} shards[{i}])")
        size = path.stat().st_size
        if size != s["bytes"]:
            raise DumpError(f"{path}: {size} bytes, {mf.MANIFEST} shards[{i}].bytes says {s['bytes']} "
                            "(truncated or corrupt shard)")
        try:
            with open(path, "rb") as fh:
                h = read_npy_header(fh)
        except NpyFormatError as e:
            raise DumpError(f"{path}: not a readable .npy shard ({e})") from None
        except OSError as e:
            raise DumpError(f"{path}: cannot be read ({e.strerror or e})") from None
        want = mf.shard_dtype(self.manifest["storage"])
        if h.dtype != want:
            what = f"storage.dtype {self.logits_dtype!r}" + (f" and storage.k {self.topk}" if self.has_topk else "")
            raise DumpError(f"{path}: dtype {h.dtype}, {mf.MANIFEST} {what} expects {want}")
        if h.fortran:
            raise DumpError(f"{path}: header says Fortran order; shards are C-order [rows, vocab]")
        shape = (s["rows"],) if self.has_topk else (s["rows"], self.vocab_size)
        if h.shape != shape:
            raise DumpError(f"{path}: shape {h.shape}, expected [{', '.join(map(str, shape))}] "
                            f"({mf.MANIFEST} shards[{i}].rows{'' if self.has_topk else ', vocab_size'})")
        if h.offset + h.data_bytes != size:
            raise DumpError(f"{path}: header and data take {h.offset + h.data_bytes} bytes, the file holds {size}")
        return path, h

    # -- tables ------------------------------------------------------------------
    def has_table(self, name: str) -> bool:
        return name == "examples" or name in self.kind.tables

    def table(self, name: str) -> Any:
        """A table of this dump by name (``examples``, ``choices``, ``tokens``, or a kind's own),
        checked against its schema (columns and dtypes) and the manifest's row count."""
        if not self.has_table(name):
            raise DumpError(f"{self.path}: a {self.kind.name!r} dump has no {name!r} table "
                            f"(its tables: examples, {', '.join(self.kind.tables)})")
        cache = self.__dict__.setdefault("_tables", {})
        if name not in cache:
            cache[name] = self._table(name)
        return cache[name]

    def _table(self, name: str) -> Any:
        spec = tb.table_spec(name)
        entry = (self.manifest.get("tables") or {}).get(name)
        if self.is_complete or name == "examples":
            path = self.file(spec.file, f"tables.{name}.file")
            if not path.is_file():
                raise DumpError(f"{path}: missing (dump at {self.path} lists it)")
            return self._checked(name, path, None if entry is None else entry["rows"], f"tables.{name}.rows")
        parts = []
        for i, s in enumerate(self.manifest["shards"]):
            part = s["parts"][name]
            path = self.file(part["file"], f"shards[{i}].parts.{name}.file")
            parts.append(self._checked(name, path, part["rows"], f"shards[{i}].parts.{name}.rows"))
        if not parts:
            return tb.frame(name, {c: [] for c in spec.schema()})
        import polars as pl

        return pl.concat(parts, how="vertical")

    def _checked(self, name: str, path: Path, rows: int | None, field: str) -> Any:
        df = self._read_parquet(path)
        tb.check_frame(name, df, str(path))
        if rows is not None and df.height != rows:
            raise DumpError(f"{path}: {df.height} rows, {mf.MANIFEST} {field} says {rows}")
        return df

    @staticmethod
    def _read_parquet(path: Path) -> Any:
        import polars as pl

        try:
            return pl.read_parquet(path)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - polars raises many types (and panics) on corrupt files
            msg = " ".join(str(e).split())[:160]
            raise DumpError(f"{path}: not a readable Parquet file ({type(e).__name__}: {msg})") from None

    @property
    def examples(self) -> Any:
        return self.table("examples")

    @property
    def choices(self) -> Any:
        return self.table("choices")

    @property
    def tokens(self) -> Any:
        return self.table("tokens")

    # -- logits ----------------------------------------------------------------
    @property
    def logit_paths(self) -> list[Path]:
        """The shards of vocabulary-wide rows (empty unless ``--store full``)."""
        if not self.has_logits:
            return []
        return self.row_paths

    @property
    def row_paths(self) -> list[Path]:
        """The shard files, full rows or top-K records (empty with ``--store none``)."""
        if not self.has_rows:
            return []
        return [self.file(s["file"], f"shards[{i}].file") for i, s in enumerate(self.manifest["shards"])]

    def logit_sources(self) -> list[Path | DirectRead]:
        """What a stream over the logits shards reads (:func:`qfair.core.stream_rows`):
        each shard's path, or, for a shard whose digest :func:`digests_in_background`
        takes from the stream, a :class:`~qfair.npyio.DirectRead` that feeds it
        (to the first stream only; later streams read it without)."""
        out: list[Path | DirectRead] = []
        for i, path in enumerate(self.logit_paths):
            tap = self._streamed.get(i)
            out.append(path if tap is None else DirectRead(path, tap.claim()))
        return out

    def logit_blocks(self, verify: bool = False) -> list[np.ndarray]:
        """One read-only memory map ``[rows_i, vocab]`` per shard, in row order
        (a top-K dump: ``[rows_i]`` records with fields logprob, id, tail).

        Checks each shard's size and header (dtype, order, shape) against the
        manifest; with ``verify=True`` also its digest (reads every byte).
        """
        if not self.has_rows:
            return []
        blocks = []
        for i, s in enumerate(self.manifest["shards"]):
            path, h = self._shard_header(i)
            if verify:
                mf.check_file_digest(path, s, f"shards[{i}]")
            if h.data_bytes == 0:
                blocks.append(np.empty(h.shape, dtype=h.dtype))
                continue
            try:
                blocks.append(np.memmap(path, dtype=h.dtype, mode="r", offset=h.offset, shape=h.shape))
            except (ValueError, OSError) as e:
                raise DumpError(f"{path}: not a readable .npy shard ({e})") from None
        return blocks

    # -- alignment --------------------------------------------------------------
    def aligned_with(self, other: Dump) -> bool:
        """True when both dumps are of one kind, share the tokenizer, and agree
        on their examples and on the kind's alignment keys row for row (for
        ``multiple_choice``: example_id, choice, pos, target of every scored
        token); otherwise DumpError naming the first difference. False when
        the kind says the two are not meant to align row by row (a generation
        dump made without ``--reference``) and their examples agree."""
        pair = f"{self.path} vs {other.path}"
        if self.kind.name != other.kind.name:
            raise DumpError(f"{pair}: dump kinds differ ({self.kind.name!r} vs {other.kind.name!r}); not aligned")
        check_same_task_versions(self.manifest, other.manifest, pair)
        if self.kind.align_check:
            import importlib

            module, _, name = self.kind.align_check.partition(":")
            getattr(importlib.import_module(module), name)(self, other, pair)
        from qfair.scoring import fingerprint_difference

        a, b = self.tokenizer_fingerprint, other.tokenizer_fingerprint
        k = fingerprint_difference(a, b)
        if k is not None:
            raise DumpError(f"{pair}: tokenizer fingerprint field {k!r} differs "
                            f"({a.get(k)!r} vs {b.get(k)!r}); the dumps are not aligned")
        if self.vocab_size != other.vocab_size:
            raise DumpError(f"{pair}: vocab_size {self.vocab_size} vs {other.vocab_size}; not aligned")
        if self.kind.align_table is None or not _rows_meant_to_align(self, other):
            check_same_keys(self.examples, other.examples, self.kind.example_keys, pair, mf.EXAMPLES)
            return self.kind.align_table is None
        ta, tq = self.table(self.kind.align_table), other.table(self.kind.align_table)
        check_same_keys(ta, tq, self.kind.align_keys, pair, tb.table_spec(self.kind.align_table).file)
        if self.has_rows and other.has_rows:
            ra, rb = ta["row"].to_numpy(), tq["row"].to_numpy()
            neq = np.flatnonzero(ra != rb)
            if neq.size:
                i = int(neq[0])
                raise DumpError(f"{pair}: tokens.parquet row {i} key 'row' differs ({ra[i]} vs {rb[i]}); not aligned")
        check_same_keys(self.examples, other.examples, self.kind.example_keys, pair, mf.EXAMPLES)
        return True


def _rows_meant_to_align(a: Dump, b: Dump) -> bool:
    if not a.kind.rows_align:
        return True
    import importlib

    module, _, name = a.kind.rows_align.partition(":")
    return bool(getattr(importlib.import_module(module), name)(a, b))


def open_dump(path: str | os.PathLike) -> Dump:
    """Open a dump directory; DumpError (a ValueError) names file and field on failure."""
    return Dump(path)


def check_same_task_versions(a: dict[str, Any], b: dict[str, Any], pair: str) -> None:
    """DumpError when a task of both dumps was rendered / scored under different
    versions (``prompt_format_version`` in the manifests' task records)."""
    va = {t.get("name"): t.get("prompt_format_version") for t in a.get("tasks") or []}
    for t in b.get("tasks") or []:
        name, vb = t.get("name"), t.get("prompt_format_version")
        if name in va and va[name] is not None and vb is not None and va[name] != vb:
            raise DumpError(f"{pair}: task {name!r} has version {va[name]!r} vs {vb!r}; "
                            "results of different task versions are not comparable")


def check_same_keys(a: pl.DataFrame, b: pl.DataFrame, keys: tuple[str, ...], pair: str, table: str) -> None:
    """Raise DumpError naming the first row and key where two tables differ."""
    if a.height != b.height:
        raise DumpError(f"{pair}: {table} has {a.height} vs {b.height} rows; not aligned")
    for key in keys:
        ca, cb = a[key].to_numpy(), b[key].to_numpy()
        neq = np.flatnonzero(ca != cb)
        if neq.size:
            i = int(neq[0])
            raise DumpError(f"{pair}: {table} row {i} key {key!r} differs "
                            f"({ca[i]!r} vs {cb[i]!r}); the dumps are not aligned")


def hash_order(dumps: Sequence[Dump]) -> list[tuple[Dump, tuple[str, int, str | None, str]]]:
    """Every listed file of ``dumps`` in the order the analysis reads them: the
    tables first (read at the start), then the logits shards of the first two
    dumps (base and the first quantized one) by their first row, base first, as
    the stream pairs them; then the other dumps' shards. The hash thread then
    reads near the stream, so on a cold disk each byte is read once and on a dump
    larger than the page cache the stream finds what the hash just read."""
    tables, shards = [], []
    for k, d in enumerate(dumps):
        first_rows = [s.get("first_row", 0) for s in d.manifest["shards"]]
        for item in d.listed_files():
            field = item[3]
            if field.startswith("shards[") and "].parts." not in field:
                i = int(field[len("shards["):field.index("]")])
                shards.append(((0 if k < 2 else k, first_rows[i], k), (d, item)))
            else:
                tables.append((d, item))
    return tables + [entry for _, entry in sorted(shards, key=lambda kv: kv[0])]


class _StreamedShard:
    """A logits shard whose digest the analysis' stream takes as it reads the file
    with O_DIRECT, so that a cold disk is read once and its pages never enter the
    page cache (:mod:`qfair.directio`); the hash thread leaves it alone."""

    def __init__(self, path: Path, entry: dict[str, Any], field: str):
        self.path, self.entry, self.field = path, entry, field
        self.algorithm, self.want = mf.verifying_digest(entry)
        self.digest: StreamedDigest | None = None

    def claim(self) -> StreamedDigest | None:
        """The digest to feed, for the first stream that asks; None after."""
        if self.digest is not None:
            return None
        self.digest = StreamedDigest(self.algorithm)
        return self.digest

    def mismatch(self) -> DumpError | None:
        """The error if the stream read the whole file and its digest differs."""
        d = self.digest
        if d is None or d.nbytes != self.entry["bytes"] or d.hexdigest() == self.want:
            return None
        return DumpError(f"{self.path}: {self.algorithm} differs from {mf.MANIFEST} {self.field}.{self.algorithm} "
                         "(corrupt or replaced file)")

    def check(self) -> None:
        """DumpError on a mismatch; a file the stream did not read whole is hashed now."""
        if self.digest is not None and self.digest.nbytes == self.entry["bytes"]:
            err = self.mismatch()
            if err is not None:
                raise err
        else:
            mf.check_file_digest(self.path, self.entry, self.field)


def _streamed_shards(dumps: Sequence[Dump]) -> dict[tuple[int, str], _StreamedShard]:
    """The logits shards whose digests the stream takes (full rows, a digest
    recorded, read with O_DIRECT: :func:`qfair.directio.read_direct`), by
    (dump index, manifest field)."""
    out: dict[tuple[int, str], _StreamedShard] = {}
    for k, d in enumerate(dumps):
        if not d.has_logits:
            continue
        for i, s in enumerate(d.manifest["shards"]):
            field = f"shards[{i}]"
            path = d.file(s["file"], f"{field}.file")
            if mf.verifying_digest(s)[1] is not None and read_direct(path):
                out[(k, field)] = d._streamed[i] = _StreamedShard(path, s, field)
    return out


@contextmanager
def digests_in_background(dumps: Sequence[Dump]) -> Iterator[None]:
    """Check the dumps' files against their digests on a second thread while the block runs.

    The block's work and the hashing read the same files at the same time (one
    pass over a cold disk instead of two; hashlib and xxhash release the GIL).
    Shards mostly absent from the page cache are not read by the hash thread at
    all: the block's stream reads them with O_DIRECT and feeds their digests as
    it goes (:meth:`Dump.logit_sources`); one it did not read whole is hashed
    when the block ends. A mismatch
    raises :class:`DumpError` when the block ends, before its result is used;
    if the block fails, a mismatch already found is raised in its place (a
    corrupt file is the likelier cause) and the hashing stops. The thread's
    seconds go to the active stage timer as "hash (second thread)", the wait
    for it at the end as "hash wait".
    """
    if not dumps:
        yield
        return
    timer = active_timer()
    stop = threading.Event()
    failure: list[BaseException] = []
    streamed = _streamed_shards(dumps)
    index = {id(d): k for k, d in enumerate(dumps)}

    def run() -> None:
        t0 = time.perf_counter()
        try:
            for d, (rel, _nbytes, entry, field) in hash_order(dumps):
                if stop.is_set():
                    return
                if (index[id(d)], field) not in streamed:
                    d.check_digest(rel, entry, field, stop)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            failure.append(e)
        finally:
            if timer is not None:
                timer.add("hash (second thread)", time.perf_counter() - t0)

    worker = threading.Thread(target=run, name="qfair-hash", daemon=True)
    worker.start()
    try:
        try:
            yield
        except BaseException:
            stop.set()
            worker.join()
            found = [e for e in failure if isinstance(e, DumpError)]
            found += [e for e in (s.mismatch() for s in streamed.values()) if e is not None]
            if found:
                raise found[0] from None
            raise
        t0 = time.perf_counter()
        worker.join()
        if failure:
            raise failure[0]
        for s in streamed.values():
            s.check()
        if timer is not None:
            timer.add("hash wait", time.perf_counter() - t0)
    finally:
        for d in dumps:
            d._streamed = {}
