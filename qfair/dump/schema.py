"""The manifest's schema: every field, its type and its range, checked before
any work.

:func:`validate_manifest` is what the reader (and a resumed writer) runs on a
parsed ``manifest.json``. It is driven by the registries: the tables a kind
must list come from :mod:`qfair.dump.kinds`, their files from
:mod:`qfair.dump.tables`, so a newly registered kind validates with no change
here. Unknown extra fields are allowed (producers record their own sections
and per-shard counters); known fields must have the documented type and range.

Every failure is a one-line :class:`DumpError` naming the file and the field
(``shards[3].rows``), the value found and what was expected.

File names in a manifest are checked here lexically (:func:`check_relpath`:
relative, no ``..``, no empty or ``.`` parts); :func:`inside` checks where a
name really leads (after symbolic links) when the file is opened, so that
nothing outside the dump directory is ever read.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qfair.dump import DumpError

__all__ = ["validate_manifest", "check_relpath", "inside", "SHA256_RE", "MAX_VOCAB"]

SHA256_RE = re.compile(r"[0-9a-f]{64}")
XXH3_128_RE = re.compile(r"[0-9a-f]{32}")
# vocabularies beyond 2^31 entries are not a language model's (and would overflow the core's indices)
MAX_VOCAB = 2**31 - 1
_MAX_INT = 2**62  # counts, rows and byte sizes: anything larger is damage, not data


def _show(v: Any) -> str:
    r = repr(v)
    if len(r) > 60:
        r = r[:57] + "..."
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(v), type(v).__name__)
    return f"{r} ({kind})"


class _Check:
    """Field checks against one manifest file; each raises DumpError naming the field."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, field: str, value: Any, expected: str) -> None:
        raise DumpError(f"{self.path}: field '{field}' is {_show(value)}, expected {expected}")

    def need(self, obj: Mapping[str, Any], key: str, field: str) -> Any:
        if key not in obj:
            raise DumpError(f"{self.path}: field '{field}' missing")
        return obj[key]

    def obj(self, v: Any, field: str, *, null: bool = False) -> dict[str, Any] | None:
        if v is None and null:
            return None
        if not isinstance(v, dict):
            self.fail(field, v, "an object" + (" or null" if null else ""))
        return v

    def list_(self, v: Any, field: str, *, null: bool = False) -> list[Any] | None:
        if v is None and null:
            return None
        if not isinstance(v, list):
            self.fail(field, v, "a list" + (" or null" if null else ""))
        return v

    def int_(self, v: Any, field: str, lo: int = 0, hi: int = _MAX_INT, *, null: bool = False) -> int | None:
        if v is None and null:
            return None
        if type(v) is not int or not lo <= v <= hi:
            rng = f">= {lo}" if hi == _MAX_INT else f"in {lo}..{hi}"
            self.fail(field, v, f"an integer {rng}" + (" or null" if null else ""))
        return v

    def str_(self, v: Any, field: str, *, choices: tuple[str, ...] | None = None, null: bool = False,
             nonempty: bool = False) -> str | None:
        if v is None and null:
            return None
        if not isinstance(v, str) or (choices is not None and v not in choices) or (nonempty and not v):
            want = (f"one of {', '.join(repr(c) for c in choices)}" if choices is not None
                    else "a non-empty string" if nonempty else "a string")
            self.fail(field, v, want + (" or null" if null else ""))
        return v

    def sha(self, v: Any, field: str, *, null: bool = False) -> str | None:
        if v is None and null:
            return None
        if not isinstance(v, str) or not SHA256_RE.fullmatch(v):
            self.fail(field, v, "a sha256 (64 lowercase hex digits)" + (" or null" if null else ""))
        return v

    def xxh3(self, v: Any, field: str) -> str | None:
        """An optional xxh3_128 digest (absent in dumps written before it was recorded)."""
        if v is not None and (not isinstance(v, str) or not XXH3_128_RE.fullmatch(v)):
            self.fail(field, v, "an xxh3_128 digest (32 lowercase hex digits) or null")
        return v

    def relpath(self, v: Any, field: str) -> str:
        if not isinstance(v, str):
            self.fail(field, v, "a relative path inside the dump directory")
        why = check_relpath(v)
        if why:
            raise DumpError(f"{self.path}: field '{field}' is {_show(v)}: {why}; refusing a file outside the "
                            "dump directory")
        return v

    def file_entry(self, e: Any, field: str, *, want_file: str | None = None) -> dict[str, Any]:
        """{file, rows, bytes, sha256} of a table or a table part."""
        e = self.obj(e, field)
        f = self.relpath(self.need(e, "file", f"{field}.file"), f"{field}.file")
        if want_file is not None and f != want_file:
            self.fail(f"{field}.file", f, repr(want_file))
        self.int_(self.need(e, "rows", f"{field}.rows"), f"{field}.rows")
        self.int_(self.need(e, "bytes", f"{field}.bytes"), f"{field}.bytes")
        self.sha(self.need(e, "sha256", f"{field}.sha256"), f"{field}.sha256")
        return e


def check_relpath(rel: str) -> str | None:
    """Why ``rel`` is not a plain relative path inside a directory (None when it is)."""
    if not rel:
        return "an empty path"
    if "\x00" in rel:
        return "a path with a NUL byte"
    if "\\" in rel:
        return "a path with a backslash"
    if rel.startswith("/") or re.match(r"[A-Za-z]:", rel):
        return "an absolute path"
    parts = rel.split("/")
    if any(p == ".." for p in parts):
        return "a path with '..'"
    if any(p in ("", ".") for p in parts):
        return "a path with empty or '.' parts"
    return None


def inside(root: Path, rel: str, where: str, real_root: str | None = None) -> Path:
    """``root / rel`` after checking that it stays inside ``root`` once every
    symbolic link is followed; DumpError otherwise. ``real_root``: ``root``
    already resolved (os.path.realpath), when the caller keeps it."""
    why = check_relpath(rel)
    if why:
        raise DumpError(f"{where}: {rel!r} is {why}; refusing a file outside the dump directory")
    p = root / rel
    try:
        base = real_root or os.path.realpath(root, strict=False)
        real = os.path.realpath(p, strict=False)
    except (OSError, RuntimeError, ValueError) as e:  # a symlink loop
        raise DumpError(f"{p}: cannot be resolved ({e})") from None
    if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
        raise DumpError(f"{p}: leads outside the dump directory (to {real}); refusing to read it")
    return p


# ---------------------------------------------------------------------------
# the manifest
# ---------------------------------------------------------------------------

def validate_manifest(m: Any, path: Path) -> dict[str, Any]:
    """Check a parsed manifest against the schema (module doc); returns it."""
    c = _Check(path)
    kind, complete, vocab, v2 = _check_header(c, m, path)
    _check_tasks(c, m)
    full, row_bytes = _check_storage(c, m, kind, vocab)
    plan = _check_plan(c, m)
    n_examples = _check_tables(c, m, kind, complete, v2)
    first_shard = _check_part(c, m, plan, complete)
    _check_shards(c, m, kind, plan, first_shard, n_examples, complete, full, row_bytes)
    _check_run(c, m)
    return m


def _check_header(c: _Check, m: Any, path: Path) -> tuple[Any, bool, int, bool]:
    """format, version, required keys, kind, status, model, tokenizer, vocabulary:
    (the kind, complete, the vocabulary size, format version >= 2)."""
    from qfair.dump import layout as mf
    from qfair.dump.kinds import DEFAULT_KIND, get_kind

    if not isinstance(m, dict):
        raise DumpError(f"{path}: top level is {type(m).__name__}, expected an object")
    if m.get("format") != mf.FORMAT:
        c.fail("format", m.get("format"), repr(mf.FORMAT))
    fv = c.int_(c.need(m, "format_version", "format_version"), "format_version", 1, mf.FORMAT_VERSION)
    v2 = fv >= 2
    required = mf.REQUIRED_KEYS + (("kind", "tasks", "tables") if v2 else ())
    for key in required:
        c.need(m, key, key)
    kind_name = c.str_(m.get("kind", DEFAULT_KIND), "kind", nonempty=True)
    try:
        kind = get_kind(kind_name)
    except DumpError as e:
        raise DumpError(f"{path}: field 'kind': {e}") from None
    status = c.str_(m["status"], "status", choices=("partial", "complete"))
    complete = status == "complete"
    c.str_(m.get("created_by", ""), "created_by")
    c.obj(m.get("model", {}), "model", null=True)
    c.obj(m["tokenizer"], "tokenizer", null=True)
    vocab = c.int_(m["vocab_size"], "vocab_size", 1, MAX_VOCAB)
    return kind, complete, vocab, v2


def _check_tasks(c: _Check, m: dict[str, Any]) -> None:
    """Every task listed once, by name."""
    tasks = c.list_(m.get("tasks", []), "tasks")
    names = set()
    for i, t in enumerate(tasks):
        t = c.obj(t, f"tasks[{i}]")
        name = c.str_(c.need(t, "name", f"tasks[{i}].name"), f"tasks[{i}].name", nonempty=True)
        if name in names:
            c.fail(f"tasks[{i}].name", name, "a task name not listed twice")
        names.add(name)
        if "kind" in t:
            c.str_(t["kind"], f"tasks[{i}].kind", nonempty=True)


def _check_storage(c: _Check, m: dict[str, Any], kind: Any, vocab: int) -> tuple[bool, int]:
    """The storage record: (whether rows are stored, the bytes of one row)."""
    from qfair.dump import layout as mf

    st = c.obj(m["storage"], "storage")
    mode = c.str_(c.need(st, "mode", "storage.mode"), "storage.mode", choices=mf.STORE_MODES)
    dtype = c.str_(c.need(st, "dtype", "storage.dtype"), "storage.dtype", choices=mf.STORE_DTYPES)
    full = mode != "none"  # a row per scored token: vocabulary-wide (full) or a top-K record (topk)
    if full and not kind.stores_rows:
        c.fail("storage.mode", mode, f"'none' (a {kind.name!r} dump stores no logits rows)")
    if mode == "topk":
        c.int_(c.need(st, "k", "storage.k"), "storage.k", 1, vocab)
    if "values" in st:
        c.str_(st["values"], "storage.values", choices=("log_softmax",))
    if st.get("npy_dtype") is not None or (full and "npy_dtype" in st):
        c.str_(st.get("npy_dtype"), "storage.npy_dtype", choices=(mf.NPY_DTYPES[dtype],))
    row_bytes = (mf.topk_record(dtype, st["k"]).itemsize if mode == "topk"
                 else vocab * int(mf.NPY_DTYPES[dtype][-1]))
    if "shard_rows" in st:
        c.int_(st["shard_rows"], "storage.shard_rows", 1)
    for key in ("n_rows", "n_tokens", "n_shards"):
        if key in st:
            c.int_(st[key], f"storage.{key}", null=True)
    return full, row_bytes


def _check_plan(c: _Check, m: dict[str, Any]) -> list[Any] | None:
    """The shard plan (None: shards cut on the fly), and no more shards than it has."""
    plan = c.list_(m.get("plan"), "plan", null=True)
    if plan is not None:
        for i, p in enumerate(plan):
            p = c.obj(p, f"plan[{i}]")
            c.int_(c.need(p, "index", f"plan[{i}].index"), f"plan[{i}].index", i, i)
            _range(c, c.need(p, "examples", f"plan[{i}].examples"), f"plan[{i}].examples")
            c.int_(c.need(p, "first_row", f"plan[{i}].first_row"), f"plan[{i}].first_row")
            c.int_(c.need(p, "rows", f"plan[{i}].rows"), f"plan[{i}].rows", null=True)

    if plan is not None and len(shards_of(m)) > len(plan):
        c.fail("shards", f"{len(m['shards'])} shards", f"at most the {len(plan)} shards of the plan")
    return plan


def _check_tables(c: _Check, m: dict[str, Any], kind: Any, complete: bool, v2: bool) -> int | None:
    """The tables: known, each a file entry, all of the kind's there when complete;
    returns the examples' row count."""
    from qfair.dump.tables import table_spec

    tables = c.obj(m.get("tables", {}), "tables")
    for name, e in tables.items():
        try:
            spec = table_spec(name)
        except DumpError:
            c.fail(f"tables.{name}", name, "a known table (" + ", ".join(("examples", *kind.tables)) + ")")
        c.file_entry(e, f"tables.{name}", want_file=spec.file)
    want_tables = ("examples", *kind.tables) if complete else ("examples",)
    if v2:
        for name in want_tables:
            c.need(tables, name, f"tables.{name}")
    n_examples = tables["examples"]["rows"] if "examples" in tables else None
    return n_examples


def _check_part(c: _Check, m: dict[str, Any], plan: list[Any] | None, complete: bool) -> int:
    """One part of a data-parallel dump (qfair.dump.distributed): the shards [a, b)
    of the plan; returns the first shard it writes (0 for a whole dump)."""
    part = c.obj(m.get("part"), "part", null=True)
    first_shard = 0
    if part is not None:
        if plan is None:
            c.fail("plan", None, "the shard plan (a part of a data-parallel dump splits planned shards)")
        if complete:
            c.fail("status", m["status"], "'partial' (a part of a data-parallel dump is merged, never complete itself)")
        world = c.int_(c.need(part, "world_size", "part.world_size"), "part.world_size", 1)
        c.int_(c.need(part, "rank", "part.rank"), "part.rank", 0, world - 1)
        first_shard, end_shard = _range(c, c.need(part, "shards", "part.shards"), "part.shards")
        if end_shard > len(plan):
            c.fail("part.shards", part["shards"], f"a range within the {len(plan)} shards of the plan")
        if not isinstance(part.get("done", False), bool):
            c.fail("part.done", part.get("done"), "a boolean")
        if len(shards_of(m)) > end_shard - first_shard:
            c.fail("shards", f"{len(m['shards'])} shards", f"at most the {end_shard - first_shard} shards of part.shards")
    return first_shard


def _check_shards(c: _Check, m: dict[str, Any], kind: Any, plan: list[Any] | None, first_shard: int,
                  n_examples: int | None, complete: bool, full: bool, row_bytes: int) -> None:
    """Each shard in order: its examples and rows follow the previous one's and the
    plan, its file and parts are there; a complete dump's shards cover every example."""
    st = m["storage"]
    shards = c.list_(m["shards"], "shards")
    next_ex = next_row = 0
    if first_shard:
        next_ex = plan[first_shard]["examples"][0] if first_shard < len(plan) else (n_examples or 0)
        next_row = plan[first_shard]["first_row"] if first_shard < len(plan) else 0
    seen_files: set[str] = set()
    for i, s in enumerate(shards):
        f = f"shards[{i}]"
        s = c.obj(s, f)
        c.int_(c.need(s, "index", f"{f}.index"), f"{f}.index", first_shard + i, first_shard + i)
        a, b = _range(c, c.need(s, "examples", f"{f}.examples"), f"{f}.examples")
        if a != next_ex:
            c.fail(f"{f}.examples", [a, b], f"a range starting at {next_ex} (where the previous shard ended)")
        if n_examples is not None and b > n_examples:
            c.fail(f"{f}.examples", [a, b], f"a range within the {n_examples} examples of tables.examples.rows")
        next_ex = b
        c.int_(c.need(s, "first_row", f"{f}.first_row"), f"{f}.first_row", next_row, next_row)
        rows = c.int_(c.need(s, "rows", f"{f}.rows"), f"{f}.rows")
        next_row += rows
        nbytes = c.int_(c.need(s, "bytes", f"{f}.bytes"), f"{f}.bytes")
        if plan is not None:
            p = plan[first_shard + i]
            for key, got in (("examples", [a, b]), ("first_row", s["first_row"]), ("rows", rows)):
                if p[key] is not None and got != p[key]:
                    c.fail(f"{f}.{key}", got, f"{p[key]!r} (plan[{i}].{key})")
        if full:
            rel = c.relpath(c.need(s, "file", f"{f}.file"), f"{f}.file")
            if rel in seen_files:
                c.fail(f"{f}.file", rel, "a file no other shard lists")
            seen_files.add(rel)
            c.sha(c.need(s, "sha256", f"{f}.sha256"), f"{f}.sha256")
            c.xxh3(s.get("xxh3_128"), f"{f}.xxh3_128")
            if nbytes < rows * row_bytes:
                c.fail(f"{f}.bytes", nbytes, f"at least {rows} rows x {row_bytes} bytes")
        else:
            if s.get("file") is not None:
                c.fail(f"{f}.file", s.get("file"), "null (storage.mode is 'none')")
            c.sha(s.get("sha256"), f"{f}.sha256", null=True)
            if s.get("xxh3_128") is not None:
                c.fail(f"{f}.xxh3_128", s.get("xxh3_128"), "null (storage.mode is 'none')")
        if "nonfinite_rows" in s:
            c.int_(s["nonfinite_rows"], f"{f}.nonfinite_rows", 0, rows)
        parts = s.get("parts")
        if parts is not None or not complete:
            parts = c.obj(c.need(s, "parts", f"{f}.parts"), f"{f}.parts")
            for name in kind.tables:
                c.file_entry(c.need(parts, name, f"{f}.parts.{name}"), f"{f}.parts.{name}")
            for name in parts:
                if name not in kind.tables:
                    c.fail(f"{f}.parts.{name}", name, f"a table of a {kind.name!r} dump ({', '.join(kind.tables)})")
    if complete and n_examples is not None and next_ex != n_examples:
        c.fail("shards", f"{len(shards)} shards covering {next_ex} examples",
               f"shards covering all {n_examples} examples of a complete dump")
    if complete and full and st.get("n_rows") is not None and st["n_rows"] != next_row:
        c.fail("storage.n_rows", st["n_rows"], f"{next_row} (the sum of shards[].rows)")


def _check_run(c: _Check, m: dict[str, Any]) -> None:
    """counts, run (config, threads, times) and libraries."""
    counts = c.obj(m.get("counts", {}), "counts")
    for k, v in counts.items():
        c.int_(v, f"counts.{k}")
    run = c.obj(m.get("run", {}), "run")
    if "config" in run:
        c.obj(run["config"], "run.config", null=True)
    if "threads" in run:
        c.int_(run["threads"], "run.threads", 1, null=True)
    for key in ("start_time", "end_time"):
        if key in run:
            c.str_(run[key], f"run.{key}", null=True)
    c.obj(m.get("libraries", {}), "libraries", null=True)


def shards_of(m: dict[str, Any]) -> list[Any]:
    return m["shards"] if isinstance(m.get("shards"), list) else []


def _range(c: _Check, v: Any, field: str) -> tuple[int, int]:
    if (not isinstance(v, list) or len(v) != 2 or not all(type(x) is int and 0 <= x <= _MAX_INT for x in v)
            or v[0] > v[1]):
        c.fail(field, v, "[start, end] with 0 <= start <= end")
    return v[0], v[1]
