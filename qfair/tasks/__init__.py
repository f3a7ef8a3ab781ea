"""The task registry: what the models are asked.

Built-in tasks render prompts, choices and gold labels exactly as
lm-evaluation-harness does, so per-choice log-likelihoods computed on them
compare with its numbers::

    import qfair.tasks as T
    task = T.get("piqa")                          # built-in sample, offline
    task = T.get("piqa", data_file="piqa.jsonl")  # your copy, dataset field names
    for doc in task.docs():
        doc.context, doc.choices, doc.gold, doc.group, doc.doc_index, doc.example_id

``example_id`` is ``"{task}/{doc_index}/{sha256(row)[:12]}"`` over the
canonical JSON of the source row, so two dumps of the same data align.
"""
from __future__ import annotations

from .base import Doc, Task, TaskDataError, TaskError, canonical_json, make_example_id, row_hash
from .formats import TRUTHFULQA_PRIMER, hellaswag_preprocess
from .registry import (
    GROUPS,
    LM_EVAL_TASK_FILES,
    SPECS,
    TaskSpec,
    get,
    has_builtin_sample,
    names,
    parse_data_files,
    resolve,
    spec,
)

__all__ = [
    "Doc",
    "GROUPS",
    "LM_EVAL_TASK_FILES",
    "SPECS",
    "Task",
    "TaskDataError",
    "TaskError",
    "TaskSpec",
    "TRUTHFULQA_PRIMER",
    "canonical_json",
    "get",
    "has_builtin_sample",
    "hellaswag_preprocess",
    "make_example_id",
    "names",
    "parse_data_files",
    "resolve",
    "row_hash",
    "spec",
]
