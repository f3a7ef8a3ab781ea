"""The tables a dump may hold: names, files, and their exact column schemas.

Every table is Parquet with a fixed schema, so two runs of the same work write
identical contents and a reader can check any file before using it. A dump
kind (:mod:`qfair.dump.kinds`) says which of these tables it has. New tables
are registered with :func:`register_table`.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qfair.dump import DumpError

__all__ = ["TableSpec", "TABLES", "register_table", "table_spec", "frame", "check_frame", "examples_columns"]


@dataclass(frozen=True)
class TableSpec:
    name: str                       # e.g. "tokens"
    file: str                       # e.g. "tokens.parquet"
    schema: Callable[[], dict[str, Any]]   # column -> polars dtype (built lazily: polars loads on use)
    doc: str                        # one line: what one row is


TABLES: dict[str, TableSpec] = {}


def register_table(spec: TableSpec) -> TableSpec:
    if spec.name in TABLES:
        raise ValueError(f"table {spec.name!r} is registered twice")
    TABLES[spec.name] = spec
    return spec


def table_spec(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise DumpError(f"unknown dump table {name!r}; known: {', '.join(sorted(TABLES))}") from None


def _examples() -> dict[str, Any]:
    import polars as pl

    return {
        "example_id": pl.Utf8, "task": pl.Utf8, "doc_index": pl.Int64, "group": pl.Utf8,
        "label": pl.Int64, "n_choices": pl.Int64, "context": pl.Utf8,
        "choices": pl.List(pl.Utf8), "labels": pl.List(pl.Int64), "extras": pl.Utf8,
    }


def _choices() -> dict[str, Any]:
    import polars as pl

    return {
        "task": pl.Utf8, "example_id": pl.Utf8, "doc_index": pl.Int64, "choice": pl.Int64,
        "loglik": pl.Float64, "n_tokens": pl.Int64, "n_chars": pl.Int64, "n_bytes": pl.Int64,
        "is_greedy": pl.Boolean, "first_row": pl.Int64, "n_rows": pl.Int64,
    }


def _tokens() -> dict[str, Any]:
    import polars as pl

    return {
        "row": pl.Int64, "task": pl.Utf8, "example_id": pl.Utf8, "choice": pl.Int64, "pos": pl.Int64,
        "target": pl.Int64, "logprob": pl.Float32, "entropy": pl.Float32, "max_logprob": pl.Float32,
        "argmax": pl.Int64, "rank": pl.Int64,
    }


EXAMPLES = register_table(TableSpec(
    "examples", "examples.parquet", _examples,
    "one row per example (a question with its choices, a prompt, a text chunk)"))
CHOICES = register_table(TableSpec(
    "choices", "choices.parquet", _choices,
    "one row per (example, choice): its summed log-likelihood and where its logits rows are"))
TOKENS = register_table(TableSpec(
    "tokens", "tokens.parquet", _tokens,
    "one row per scored token: its key, target id and the target-token scalars"))


def frame(name: str, columns: Mapping[str, Any], where: str = "") -> Any:
    """A polars DataFrame of table ``name`` built from ``columns`` (lists or
    arrays), with exactly the table's columns and dtypes; DumpError names the
    table and column otherwise."""
    import polars as pl

    schema = table_spec(name).schema()
    missing = [c for c in schema if c not in columns]
    extra = [c for c in columns if c not in schema]
    at = f"{where}: " if where else ""
    if missing or extra:
        parts = ([f"missing column(s) {', '.join(missing)}"] if missing else []) + \
                ([f"unknown column(s) {', '.join(extra)}"] if extra else [])
        raise DumpError(f"{at}table {name!r}: {'; '.join(parts)} (expected {', '.join(schema)})")
    lengths = {c: len(columns[c]) for c in schema}
    if len(set(lengths.values())) > 1:
        raise DumpError(f"{at}table {name!r}: columns differ in length ({lengths})")
    try:
        return pl.DataFrame({c: columns[c] for c in schema}, schema=schema, strict=True)
    except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError) as e:
        raise DumpError(f"{at}table {name!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def check_frame(name: str, df: Any, where: str) -> None:
    """DumpError unless ``df`` has exactly the columns and dtypes of table ``name``."""
    schema = table_spec(name).schema()
    got = dict(df.schema)
    for col, dtype in schema.items():
        if col not in got:
            raise DumpError(f"{where}: column {col!r} missing (table {name!r} needs {', '.join(schema)})")
        if got[col] != dtype:
            raise DumpError(f"{where}: column {col!r} has dtype {got[col]}, expected {dtype}")
    extra = [c for c in got if c not in schema]
    if extra:
        raise DumpError(f"{where}: unknown column(s) {', '.join(extra)} for table {name!r}")


def examples_columns(docs: Sequence[Any],
                     answer: Callable[[Any], tuple[int, int, list[str], list[int] | None]]) -> dict[str, list]:
    """The examples table as columns, one row per document; ``answer(doc)`` gives
    the dump kind's ``(label, n_choices, choices, labels)``."""
    cols: dict[str, list] = {k: [] for k in ("example_id", "task", "doc_index", "group", "label", "n_choices",
                                             "context", "choices", "labels", "extras")}
    for d in docs:
        label, n_choices, choices, labels = answer(d)
        cols["example_id"].append(d.example_id)
        cols["task"].append(d.task)
        cols["doc_index"].append(int(d.doc_index))
        cols["group"].append(d.group)
        cols["label"].append(label)
        cols["n_choices"].append(n_choices)
        cols["context"].append(d.context)
        cols["choices"].append(choices)
        cols["labels"].append(labels)
        extras = getattr(d, "extras", None) or {}
        cols["extras"].append(json.dumps(extras, sort_keys=True, ensure_ascii=False, default=str) if extras else None)
    return cols
