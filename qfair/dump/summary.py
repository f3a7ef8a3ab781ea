"""The account a producer prints when a dump is written: counts, storage and
each task's headline metrics (computed by the analysis's own metric code)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DumpSummary", "summarize", "task_metrics"]


@dataclass
class DumpSummary:
    path: Path
    status: str
    n_examples: int
    n_choices: int
    n_rows: int
    n_shards: int
    store: str
    store_dtype: str
    seconds: float
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    nonfinite_rows: int = 0
    resumed_from_shard: int | None = None
    already_complete: bool = False
    truncated_examples: int = 0
    context_length: int | None = None

    def text(self) -> str:
        """A one-paragraph account of the dump."""
        parts = []
        for task, m in self.metrics.items():
            vals = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if k != "n")
            parts.append(f"{task} (n={int(m['n'])}: {vals})")
        stored = stored_text(self.store, self.store_dtype, self.n_rows, self.n_shards)
        head = "Dump already complete at" if self.already_complete else "Wrote"
        resumed = (f" Resumed at shard {self.resumed_from_shard}." if self.resumed_from_shard else "")
        nonfinite = (f" WARNING: {self.nonfinite_rows} row(s) held NaN/inf values (kept, flagged in tokens.parquet)."
                     if self.nonfinite_rows else "")
        truncated = (f" NOTE: {self.truncated_examples} example(s) did not fit the model's context"
                     f"{f' of {self.context_length} tokens' if self.context_length else ''}: their context "
                     "was cut from the left (as lm-evaluation-harness does)." if self.truncated_examples else "")
        return (f"{head} {self.path}: {self.n_examples} examples, {self.n_choices} choices, {stored}."
                f"{resumed} Metrics by task: {'; '.join(parts) or 'none'}. "
                f"Took {self.seconds:.1f} s.{nonfinite}{truncated}")


def _store_label(storage: dict[str, Any]) -> str:
    """The --store value a manifest's storage section records (full, none, topk:K)."""
    return f"topk:{storage['k']}" if storage.get("mode") == "topk" else str(storage.get("mode"))


def stored_text(store: str, dtype: str, n_rows: int, n_shards: int) -> str:
    """What a dump stores, in words."""
    if store == "full":
        return f"{n_rows} rows of {dtype} log-probs in {n_shards} shard(s)"
    if store.startswith("topk:"):
        return f"{n_rows} rows of the top {store[5:]} {dtype} log-probs (ids and tail mass) in {n_shards} shard(s)"
    return f"{n_rows} scored tokens (distributions not stored)"


def task_metrics(examples: Any, choices: Any, kinds: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per task: n, acc, acc_norm (where the kind has correct answers) and the task
    kind's own headline metrics (e.g. mc2, pct_stereotype, BBQ's bias scores,
    StereoSet's ICAT), computed by the analysis's own metric code."""
    import polars as pl

    from qfair.metrics.bias import model_scores
    from qfair.metrics.examples import example_stats
    from qfair.metrics.task_kinds import get_task_kind

    ex = example_stats(examples, choices, kinds)
    set_level = model_scores(ex, examples, kinds)
    res: dict[str, dict[str, float]] = {}
    for task in ex["task"].unique(maintain_order=True).to_list():
        sub = ex.filter(pl.col("task") == task)
        kind = get_task_kind(kinds.get(task))
        m: dict[str, float] = {"n": float(sub.height)}
        for name in (*(("acc", "acc_norm") if kind.correctness else ()), *kind.headline):
            if name in set_level.get(task, {}) and name not in m:
                m[name] = set_level[task][name]
                continue
            metric = kind.metric(name)
            if metric is None or name in m:
                continue
            v = sub[metric.column].cast(pl.Float64).to_numpy()
            v = v[np.isfinite(v)]
            if v.size:
                m[name] = float(v.mean())
        res[task] = m
    return res


def summarize(path: Path, manifest: dict[str, Any], seconds: float, *, resumed_from_shard: int | None = None,
              already_complete: bool = False, context_length: int | None = None) -> DumpSummary:
    """The summary of a complete dump, read back from its tables."""
    from qfair.dump.reader import open_dump

    d = open_dump(path)
    kinds = {t["name"]: t.get("kind", "multiple_choice") for t in manifest.get("tasks", [])}
    st = manifest["storage"]
    metrics = task_metrics(d.examples, d.choices, kinds) if d.kind.has_choices else {}
    n_choices = d.choices.height if d.kind.has_choices else 0
    return DumpSummary(path, manifest["status"], d.examples.height, n_choices, int(st.get("n_tokens") or 0),
                       len(manifest["shards"]) if st["mode"] != "none" else 0, _store_label(st), st["dtype"], seconds,
                       metrics, int(manifest.get("counts", {}).get("nonfinite_rows", 0)),
                       resumed_from_shard=resumed_from_shard, already_complete=already_complete,
                       truncated_examples=int(manifest.get("counts", {}).get("truncated_examples", 0)),
                       context_length=context_length)
