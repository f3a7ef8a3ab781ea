"""Per-example statistics of one model, from a dump's choices table.

The metrics and their definitions are registered in :mod:`qfair.metrics.example_metrics`
(generic) and :mod:`qfair.metrics.task_kinds` (per task kind); this module only
lays the choices out per example (validating the table against the examples)
and evaluates every registered metric.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from qfair.errors import DumpError
from qfair.metrics.example_metrics import ChoiceArrays
from qfair.metrics.task_kinds import example_metrics

__all__ = ["example_stats", "task_kinds", "example_columns"]


def example_columns() -> list[str]:
    """Per-model example columns (prefixed base_ / quant_ in the examples table)."""
    return [m.column for m in example_metrics()] + ["probs", "nonfinite"]


def task_kinds(manifest: dict[str, Any]) -> dict[str, str]:
    return {t["name"]: t.get("kind", "multiple_choice") for t in manifest.get("tasks", [])}


def _choice_arrays(examples: pl.DataFrame, choices: pl.DataFrame, kinds: dict[str, str],
                   where: str) -> ChoiceArrays:
    """The choices in example order, checked against examples.parquet."""
    ex = examples.select("task", "example_id", "label", "n_choices", "labels")
    n_ex = ex.height
    ch = choices.select("example_id", "choice", "loglik", "n_chars", "n_tokens")
    order = ex.with_row_index("_ex").select("example_id", "_ex")
    ch = ch.join(order, on="example_id", how="left")
    missing = ch.filter(pl.col("_ex").is_null())
    if missing.height:
        raise DumpError(f"{where}: choices.parquet example_id {missing['example_id'][0]!r} "
                        "is not in examples.parquet")
    ch = ch.sort(["_ex", "choice"])
    exi = ch["_ex"].to_numpy().astype(np.int64)
    counts = np.bincount(exi, minlength=n_ex)
    want = ex["n_choices"].to_numpy()
    bad = np.flatnonzero(counts != want)
    if bad.size:
        i = int(bad[0])
        raise DumpError(f"{where}: example {ex['example_id'][i]!r} has {counts[i]} rows in "
                        f"choices.parquet, examples.parquet field 'n_choices' says {want[i]}")
    kind = np.array([kinds.get(t, "multiple_choice") for t in ex["task"].to_list()], dtype=object)
    a = ChoiceArrays.build(ch["loglik"].to_numpy().astype(np.float64), ch["n_chars"].to_numpy().astype(np.float64),
                           counts, ex["label"].to_numpy(), ex["labels"].to_list(), kind,
                           ntok=ch["n_tokens"].to_numpy().astype(np.float64))
    choice = ch["choice"].to_numpy().astype(np.int64)
    if np.any(a.local != choice):
        i = int(np.flatnonzero(a.local != choice)[0])
        raise DumpError(f"{where}: choices.parquet choice indices of example {ex['example_id'][int(a.seg[i])]!r} "
                        "are not 0..n_choices-1")
    return a


def example_stats(examples: pl.DataFrame, choices: pl.DataFrame, kinds: dict[str, str],
                  where: str = "dump") -> pl.DataFrame:
    """One row per example (in ``examples`` order) with the model's choice-level statistics.

    Columns: task, example_id, kind, label, n_choices, every registered metric's
    column, ``probs`` (the choice distribution) and ``nonfinite`` (1 when a
    log-likelihood is not finite: the metrics are then NaN, never averaged).
    """
    a = _choice_arrays(examples, choices, kinds, where)
    out = examples.select("task", "example_id", "label", "n_choices").with_columns(
        pl.Series("kind", a.kind.tolist(), dtype=pl.Utf8))
    cols = []
    for m in example_metrics():
        v = np.asarray(m.compute(a), dtype=np.float64)
        if m.nan_when_bad:
            v = np.where(a.bad, np.nan, v)
        cols.append(pl.Series(m.column, v))
    # pred / pred_norm are indices
    out = out.with_columns(cols).with_columns(pl.col("pred").cast(pl.Int64), pl.col("pred_norm").cast(pl.Int64))
    # the choice distribution itself, one list per example
    # (grouped in polars: equal-length numpy cells would become a fixed-size Array)
    probs = (pl.DataFrame({"_ex": a.seg, "probs": a.p}).group_by("_ex", maintain_order=True)
             .agg(pl.col("probs"))["probs"].cast(pl.List(pl.Float64)))
    return out.with_columns(probs, pl.Series("nonfinite", a.bad.astype(np.float64)))
