"""Core types of the task registry: documents, tasks, errors and row hashing."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from qfair.errors import QfairError


class TaskError(QfairError):
    """A user-caused problem with a task: unknown name, missing data, bad option."""


class TaskDataError(TaskError):
    """A malformed data row. The message names the task, the file, the line (or
    row) and the field; the same parts are kept as attributes."""

    def __init__(self, task: str, where: str, location: str, field: str | None, problem: str):
        self.task = task
        self.where = where          # file path as given, or a description of the source
        self.location = location    # "line 7" (JSONL/CSV) or "row 7" (Parquet, hub)
        self.field = field
        self.problem = problem
        subject = f"field '{field}' " if field else ""
        super().__init__(f"{task}: {where} {location}: {subject}{problem}")


class FieldError(Exception):
    """Raised by a row converter; the loader adds task, file and line."""

    def __init__(self, field: str | None, problem: str):
        super().__init__(problem)
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Doc:
    """One rendered, validated document of a task.

    ``context`` and ``choices`` are exactly what lm-evaluation-harness renders
    with ``doc_to_text`` and ``doc_to_choice``; the scorer forms each
    continuation as ``task.target_delimiter + choice``.
    """

    task: str
    doc_index: int
    example_id: str
    context: str
    choices: list[str]
    gold: int
    labels: list[int] | None = None
    group: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def n_choices(self) -> int:
        return len(self.choices)


def canonical_json(row: Mapping[str, Any]) -> str:
    """A byte-stable JSON text of a source row: sorted keys, no spaces, UTF-8
    kept as is. Values JSON cannot hold (dates, bytes) are written with str()."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      default=_json_default)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):          # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return str(value)


def row_hash(row: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(row).encode("utf-8")).hexdigest()


def make_example_id(task: str, doc_index: int, row: Mapping[str, Any]) -> str:
    return f"{task}/{doc_index}/{row_hash(row)[:12]}"


class Task:
    """A task bound to one data source, validated in full at construction.

    Every row of the source is converted and checked when the task is built
    (``qfair.tasks.get``), so a malformed row stops the run before any model
    work; ``docs()`` then only hands out the prepared documents.
    """

    def __init__(self, *, spec: Any, source: str, source_hash: str, docs: list[Doc],
                 limit: int | None = None):
        if limit is not None and limit < 0:
            raise TaskError(f"{spec.name}: limit must be >= 0, got {limit}")
        self.spec = spec
        self.name: str = spec.name
        self.description: str = spec.description
        self.prompt_format_version: str = spec.prompt_format_version
        self.kind: str = spec.kind
        self.target_delimiter: str = spec.target_delimiter
        self.source = source
        self.source_hash = source_hash
        self.limit = limit
        self._all = docs

    @property
    def n_source_docs(self) -> int:
        """Number of documents in the source, before ``limit``."""
        return len(self._all)

    def docs(self) -> Iterator[Doc]:
        """The documents in source order, at most ``limit`` of them."""
        end = len(self._all) if self.limit is None else min(self.limit, len(self._all))
        return iter(self._all[:end])

    __iter__ = docs

    def __len__(self) -> int:
        return len(self._all) if self.limit is None else min(self.limit, len(self._all))

    def groups(self) -> list[str]:
        """Distinct non-null groups among the documents handed out, sorted."""
        return sorted({d.group for d in self.docs() if d.group is not None})

    def info(self) -> dict[str, Any]:
        """What a dump manifest records about this task."""
        return {
            "name": self.name,
            "kind": self.kind,
            "prompt_format_version": self.prompt_format_version,
            "target_delimiter": self.target_delimiter,
            "source": self.source,
            "source_hash": self.source_hash,
            "n_docs": len(self),
            "n_source_docs": self.n_source_docs,
            "limit": self.limit,
        }

    def __repr__(self) -> str:
        return (f"Task({self.name!r}, kind={self.kind!r}, source={self.source!r}, "
                f"docs={len(self)})")
