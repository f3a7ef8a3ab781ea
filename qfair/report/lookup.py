"""What several sections of the report read off the analysis tables: one
summary value, a task's kind, the tasks with gold answers, the confidence
level and interval labels."""
from __future__ import annotations

import math
from typing import Any

import polars as pl

from qfair.report.data import AnalysisData

__all__ = ["gold_tasks", "range_label"]


def _summary_value(data: AnalysisData, model: str, task: str, metric: str, col: str) -> float | None:
    s = data.summary
    r = s.filter((pl.col("model") == model) & (pl.col("task") == task) & (pl.col("metric") == metric))
    if r.height == 0 or col not in r.columns:
        return None
    v = r[col][0]
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _task_kind(data: AnalysisData, task: str) -> Any:
    from qfair.metrics.task_kinds import get_task_kind

    for df in (data.summary, data.groups, data.examples):
        col = "task_kind" if "task_kind" in df.columns else "kind"
        if col in df.columns and "task" in df.columns:
            k = df.filter(pl.col("task") == task)[col]
            if k.len():
                return get_task_kind(k[0])
    return get_task_kind(None)


def gold_tasks(data: AnalysisData) -> list[str]:
    """The tasks whose kind has gold answers (accuracy, flips and calibration mean something)."""
    return [t for t in data.tasks if _task_kind(data, t).correctness]


def range_label(lo: float, hi: float, most: int = 6) -> str:
    """``lo–hi`` with the fewest decimals (at least 2) that keep distinct ends distinct."""
    if lo == hi:
        return f"{lo:.3g}"
    for d in range(2, most + 1):
        a, b = f"{lo:.{d}f}", f"{hi:.{d}f}"
        if a != b:
            return f"{a}–{b}"
    return f"{lo:.{most + 2}g}–{hi:.{most + 2}g}"


def _conf_level(data: AnalysisData) -> float:
    return float(data.settings.get("confidence") or 0.95)


def _pct(level: float) -> str:
    return f"{100 * level:g}%"


# ---------------------------------------------------------------------------
# reliability diagrams
