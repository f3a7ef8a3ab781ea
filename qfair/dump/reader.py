"""Reading a dump: ``open_dump(path)``.

Only JSON, Parquet and ``.npy`` with ``allow_pickle=False`` are read, so opening
a dump never executes code. Tables are read lazily on first access; logits
shards are memory-mapped. A partial dump (interrupted run) is readable too: its
choices/tokens come from the table parts of the shards finished so far.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qfair.dump import DumpError
from qfair.dump import manifest as mf
from qfair.dump import tables as tb
from qfair.dump.kinds import DumpKind, get_kind
from qfair.fsutil import sha256_file

if TYPE_CHECKING:  # polars is imported lazily, when a table is first read
    import polars as pl

__all__ = ["Dump", "open_dump", "DumpError"]


class Dump:
    """A dump directory, opened for reading (see module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest: dict[str, Any] = mf.read_manifest(self.path)

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
    def has_logits(self) -> bool:
        return self.manifest["storage"]["mode"] == "full"

    @property
    def logits_dtype(self) -> str:
        return self.manifest["storage"]["dtype"]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def n_rows(self) -> int:
        """Logits rows present (sum over finished shards; 0 without --store full)."""
        if not self.has_logits:
            return 0
        return sum(int(s["rows"]) for s in self.manifest["shards"])

    @property
    def tokenizer_fingerprint(self) -> dict[str, Any]:
        return dict(self.manifest["tokenizer"] or {})

    # -- tables ------------------------------------------------------------------
    def has_table(self, name: str) -> bool:
        return name == "examples" or name in self.kind.tables

    def table(self, name: str) -> Any:
        """A table of this dump by name (``examples``, ``choices``, ``tokens``, or a kind's own)."""
        if not self.has_table(name):
            raise DumpError(f"{self.path}: a {self.kind.name!r} dump has no {name!r} table "
                            f"(its tables: examples, {', '.join(self.kind.tables)})")
        cache = self.__dict__.setdefault("_tables", {})
        if name not in cache:
            cache[name] = self._table(name, tb.table_spec(name).file)
        return cache[name]

    def _table(self, name: str, file: str) -> Any:
        path = self.path / file
        if path.is_file():
            return self._read_parquet(path)
        if self.is_complete or name == "examples":
            raise DumpError(f"{path}: missing (dump at {self.path} lists it)")
        parts = []
        for s in self.manifest["shards"]:
            part = (s.get("parts") or {}).get(name)
            if part is None:
                raise DumpError(f"{self.path / mf.MANIFEST}: field 'shards[{s.get('index')}].parts.{name}' missing")
            parts.append(self._read_parquet(self.path / part["file"]))
        if not parts:
            return tb.frame(name, {c: [] for c in tb.table_spec(name).schema()})
        import polars as pl

        return pl.concat(parts, how="vertical")

    @staticmethod
    def _read_parquet(path: Path) -> Any:
        import polars as pl

        try:
            return pl.read_parquet(path)
        except Exception as e:  # polars raises several error types for corrupt files
            raise DumpError(f"{path}: not a readable Parquet file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None

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
        if not self.has_logits:
            return []
        return [self.path / s["file"] for s in self.manifest["shards"]]

    def logit_blocks(self, verify: bool = False) -> list[np.ndarray]:
        """One read-only memory map ``[rows_i, vocab]`` per shard, in row order.

        Checks each shard's shape and dtype against the manifest; with
        ``verify=True`` also its sha256 (reads every byte).
        """
        if not self.has_logits:
            return []
        want = np.dtype(mf.NPY_DTYPES[self.logits_dtype])
        blocks = []
        expect_first = 0
        for s in self.manifest["shards"]:
            path = self.path / s["file"]
            if not path.is_file():
                raise DumpError(f"{path}: missing (listed in manifest.json shards[{s['index']}])")
            size = path.stat().st_size
            if "bytes" in s and size != s["bytes"]:
                raise DumpError(f"{path}: {size} bytes, manifest.json shards[{s['index']}].bytes says {s['bytes']} (truncated or corrupt shard)")
            if verify and sha256_file(path) != s.get("sha256"):
                raise DumpError(f"{path}: sha256 differs from manifest.json shards[{s['index']}].sha256 (corrupt shard)")
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise DumpError(f"{path}: not a readable .npy shard ({e})") from None
            if arr.dtype != want:
                raise DumpError(f"{path}: dtype {arr.dtype}, manifest.json storage.dtype {self.logits_dtype!r} expects {want}")
            if arr.ndim != 2 or arr.shape[1] != self.vocab_size:
                raise DumpError(f"{path}: shape {arr.shape}, expected [rows, {self.vocab_size}] (manifest.json vocab_size)")
            if arr.shape[0] != s["rows"]:
                raise DumpError(f"{path}: {arr.shape[0]} rows, manifest.json shards[{s['index']}].rows says {s['rows']}")
            if s.get("first_row", expect_first) != expect_first:
                raise DumpError(f"{self.path / mf.MANIFEST}: field 'shards[{s['index']}].first_row' is {s['first_row']}, expected {expect_first}")
            expect_first += arr.shape[0]
            blocks.append(arr)
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
        a, b = self.tokenizer_fingerprint, other.tokenizer_fingerprint
        for k in sorted(set(a) | set(b)):
            if k == "class":
                continue
            if a.get(k) != b.get(k):
                raise DumpError(f"{pair}: tokenizer fingerprint field {k!r} differs "
                                f"({a.get(k)!r} vs {b.get(k)!r}); the dumps are not aligned")
        if self.vocab_size != other.vocab_size:
            raise DumpError(f"{pair}: vocab_size {self.vocab_size} vs {other.vocab_size}; not aligned")
        if self.kind.align_table is None or not _rows_meant_to_align(self, other):
            check_same_keys(self.examples, other.examples, self.kind.example_keys, pair, mf.EXAMPLES)
            return self.kind.align_table is None
        ta, tq = self.table(self.kind.align_table), other.table(self.kind.align_table)
        check_same_keys(ta, tq, self.kind.align_keys, pair, tb.table_spec(self.kind.align_table).file)
        if self.has_logits and other.has_logits:
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
