"""The multiple-testing families of the summary table.

A pre-declared **primary** family: each task's primary headline metric per
quantized model (the first metric of its task kind's headline, what the
headline table leads with; for a metric with a neutral value, such as
CrowS-Pairs' pct_stereotype, the test of its distance from neutral,
``<metric>_from_neutral``). Holm controls the family-wise error over it.
Every other tested row is **secondary**: Benjamini-Hochberg within its metric
class (the summary's ``kind`` column: example, calibration, token, study,
uncertainty, ...). The ``family`` column says which family a row is in
(empty for rows without a test).

``p_holm`` and ``p_bh`` are both computed within a row's own family (the
primary family, or the row's class among the secondary rows); a reading
uses ``p_holm`` for a primary row and ``p_bh`` for a secondary one.

So that Holm over the primary family can pass at all, a primary row whose
bootstrap p is below 2 alpha is recomputed with :func:`primary_resamples`
resamples (at least 100 resamples beyond the strictest Holm threshold
alpha / m), see :func:`qfair.analyze.summary.metric_rows`.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from qfair import stats

__all__ = ["PRIMARY", "SECONDARY", "primary_metric", "primary_resamples", "adjust_families", "MAX_PRIMARY_RESAMPLES",
           "PER_THRESHOLD"]

PRIMARY, SECONDARY = "primary", "secondary"
#: resamples expected beyond the strictest Holm threshold alpha / m (relative Monte Carlo error about 10 %)
PER_THRESHOLD = 100
MAX_PRIMARY_RESAMPLES = 2_000_000


def primary_metric(task_kind: Any) -> str | None:
    """The summary metric whose test is a task's primary row (None: the kind headlines nothing)."""
    if not task_kind.headline:
        return None
    name = task_kind.headline[0]
    em = task_kind.metric(name)
    return f"{name}_from_neutral" if em is not None and em.neutral is not None else name


def primary_resamples(resamples: int, m: int, alpha: float) -> int:
    """Resamples for the primary rows near the threshold: enough that ``PER_THRESHOLD``
    replicates fall beyond alpha / m (capped at ``MAX_PRIMARY_RESAMPLES``), never fewer
    than ``resamples``."""
    if m < 1 or not 0 < alpha < 1:
        return int(resamples)
    return int(max(resamples, min(MAX_PRIMARY_RESAMPLES, math.ceil(PER_THRESHOLD * m / alpha))))


def _family(summary: pl.DataFrame) -> list[str | None]:
    from qfair.metrics.task_kinds import get_task_kind

    prim: dict[str | None, str | None] = {}
    out: list[str | None] = []
    kinds = summary["task_kind"].to_list() if "task_kind" in summary.columns else [None] * summary.height
    for metric, kind, p in zip(summary["metric"].to_list(), kinds, summary["p"].to_list()):
        if p is None or (isinstance(p, float) and math.isnan(p)):
            out.append(None)
            continue
        if kind not in prim:
            prim[kind] = primary_metric(get_task_kind(kind))
        out.append(PRIMARY if metric == prim[kind] else SECONDARY)
    return out


def adjust_families(summary: pl.DataFrame) -> pl.DataFrame:
    """``family``, ``p_holm`` and ``p_bh`` of a summary table (see the module docstring)."""
    if summary.height == 0 or "p" not in summary.columns:
        return summary.with_columns(pl.lit(None, pl.Utf8).alias("family"), pl.lit(None, pl.Float64).alias("p_holm"),
                                    pl.lit(None, pl.Float64).alias("p_bh"))
    fam = _family(summary)
    p = summary["p"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    kind = summary["kind"].to_list() if "kind" in summary.columns else [None] * summary.height
    holm = np.full(p.shape, np.nan)
    bh = np.full(p.shape, np.nan)
    groups: dict[tuple[str, Any], list[int]] = {}
    for i, f in enumerate(fam):
        if f is not None:
            groups.setdefault((f, None if f == PRIMARY else kind[i]), []).append(i)
    for idx in groups.values():
        ix = np.asarray(idx)
        holm[ix] = stats.adjust_pvalues(p[ix], "holm")
        bh[ix] = stats.adjust_pvalues(p[ix], "bh")
    return summary.with_columns(pl.Series("family", fam, dtype=pl.Utf8),
                                pl.Series("p_holm", holm).fill_nan(None), pl.Series("p_bh", bh).fill_nan(None))
