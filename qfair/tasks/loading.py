"""Reading source rows: JSON Lines, JSON arrays, CSV/TSV, Parquet, and (only
when asked for) a Hugging Face dataset. Each reader yields
``(location, row)`` pairs where location is "line N" or "row N", so a bad
row can be reported where the user will find it."""
from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .base import TaskError, canonical_json

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv", ".tsv")
PARQUET_SUFFIXES = (".parquet", ".pq")
SUPPORTED = JSON_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES


class RowError(Exception):
    """A row that cannot be read at all (bad JSON, not an object)."""

    def __init__(self, location: str, problem: str):
        super().__init__(problem)
        self.location = location
        self.problem = problem


def file_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return "json"
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise TaskError(f"{path}: unsupported data file type '{path.suffix or '(none)'}'; "
                    f"expected one of {', '.join(SUPPORTED)}")


def read_rows(data: bytes, fmt: str, *, tsv: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    if fmt == "json":
        yield from _json_rows(data)
    elif fmt == "csv":
        yield from _csv_rows(data, delimiter="\t" if tsv else ",")
    elif fmt == "parquet":
        yield from _parquet_rows(data)
    else:  # pragma: no cover - file_format() guards this
        raise ValueError(fmt)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # locate the line for the message
        line = data[: exc.start].count(b"\n") + 1
        raise RowError(f"line {line}", f"is not valid UTF-8 ({exc.reason})") from None


def _json_rows(data: bytes) -> Iterator[tuple[str, dict[str, Any]]]:
    text = _decode(data)
    stripped = text.lstrip()
    if stripped.startswith("["):
        # one JSON array of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RowError(f"line {exc.lineno}", f"is not valid JSON ({exc.msg})") from None
        for i, item in enumerate(items, 1):
            if not isinstance(item, dict):
                raise RowError(f"item {i}", f"must be a JSON object, got {type(item).__name__}")
            yield f"item {i}", item
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RowError(f"line {lineno}", f"is not valid JSON ({exc.msg} at column "
                                             f"{exc.colno})") from None
        if not isinstance(row, dict):
            raise RowError(f"line {lineno}", f"must be a JSON object, got {type(row).__name__}")
        yield f"line {lineno}", row


def _csv_rows(data: bytes, delimiter: str) -> Iterator[tuple[str, dict[str, Any]]]:
    text = _decode(data)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise RowError("line 1", f"is not valid CSV ({exc})") from None
    if len(set(header)) != len(header):
        raise RowError("line 1", f"has a repeated column name in the header {header}")
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise RowError(f"line {start}", f"is not valid CSV ({exc})") from None
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise RowError(f"line {start}", f"has {len(cells)} cells for {len(header)} columns")
        yield f"line {start}", dict(zip(header, cells))


def _parquet_rows(data: bytes) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # polars is a core dependency and reads parquet too
        import polars as pl

        rows = pl.read_parquet(io.BytesIO(data)).to_dicts()
    else:
        rows = pq.read_table(io.BytesIO(data)).to_pylist()
    for i, row in enumerate(rows, 1):
        yield f"row {i}", row


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hub_rows(path: str, config: str | None, split: str) -> tuple[list[dict[str, Any]], str]:
    """Rows of a Hugging Face dataset split and a hash over their canonical
    JSON. Only called when the user asked for the hub."""
    try:
        import datasets
    except ImportError:
        raise TaskError("reading from the Hugging Face hub needs the 'datasets' package "
                        "(pip install 'qfair[data]'); or pass a local file with "
                        "--data-file TASK=PATH") from None
    try:
        ds = datasets.load_dataset(path, config, split=split)
    except Exception as exc:  # network, auth, missing config: one line for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TaskError(f"could not load hf:{path}/{config or 'default'}/{split}: {first}") from None
    rows = [dict(r) for r in ds]
    digest = hashlib.sha256()
    for row in rows:
        digest.update(canonical_json(row).encode("utf-8"))
        digest.update(b"\n")
    return rows, digest.hexdigest()
