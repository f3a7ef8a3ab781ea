"""Disparity across the members of a task family: does quantization change one
language (or one variant) of a benchmark more than another?

A family is a set of tasks that ask the same thing in different languages:
XStoryCloze (``xstorycloze_<lang>``, headline ``acc``) and CrowS-Pairs
(``crows_pairs_<language>``, headline ``pct_stereotype``). With the paired
examples of one quantized model and at least two members present, per family:

- ``<headline>_change_spread``: max - min over members of the member's change
  of its headline (mean over its examples of quant - base);
- ``mean_kl_spread``: max - min over members of the mean per-example KL(base ||
  quant) (``kl_all_mean``; only when the analysis compared token
  distributions).

Interval: percentile bootstrap of the spread, each member's examples resampled
with the draw its own task's bootstrap uses (``qfair.stats.bootstrap_counts(n_m,
seed, b)``). Test (``p``): a permutation test of heterogeneity, H0 = the per-example
values are exchangeable across members (the change is the same in every member):
the member labels are permuted over the pooled examples, the spread recomputed,
p = (1 + #{permuted spread >= observed}) / (1 + #permutations).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from qfair.analyze.task_kinds import get_task_kind
from qfair.metrics.resampling import weighted_sums

__all__ = ["FAMILIES", "family_members", "member_values", "spread_test", "family_rows", "TEST"]

# family -> the prefix of its member tasks (member = the rest of the name)
FAMILIES = {"xstorycloze": "xstorycloze_", "crows_pairs": "crows_pairs_"}
TEST = "permutation of member labels (H0: the same change in every member); percentile bootstrap interval"
_PERM_SALT = 0x46414D


def family_members(tasks: list[str]) -> dict[str, list[str]]:
    """{family: its member tasks present in ``tasks``, in order}, families with >= 2 members."""
    out: dict[str, list[str]] = {}
    for fam, prefix in FAMILIES.items():
        members = [t for t in tasks if t.startswith(prefix)]
        if len(members) >= 2:
            out[fam] = members
    return out


def member_values(j: pl.DataFrame, task: str, what: str) -> np.ndarray:
    """One member's finite per-example values: ``what`` = "headline" (quant - base of the
    kind's primary headline metric) or "mean_kl" (``kl_all_mean``)."""
    jt = j.filter(pl.col("task") == task)
    if jt.height == 0:
        return np.zeros(0)
    if what == "mean_kl":
        if "kl_all_mean" not in jt.columns:
            return np.zeros(0)
        x = jt["kl_all_mean"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    else:
        tk = get_task_kind(jt["kind"][0] if "kind" in jt.columns else None)
        m = tk.metric(tk.headline[0])
        cols = (f"base_{m.column}", f"quant_{m.column}") if m is not None else ()
        if not cols or any(c not in jt.columns for c in cols):
            return np.zeros(0)
        x = (jt[cols[1]].cast(pl.Float64).fill_null(np.nan).to_numpy()
             - jt[cols[0]].cast(pl.Float64).fill_null(np.nan).to_numpy())
    return x[np.isfinite(x)]


def _spread(means: np.ndarray) -> np.ndarray:
    return means.max(axis=-1) - means.min(axis=-1)


def spread_test(values: list[np.ndarray], *, resamples: int, seed: int, confidence: float,
                threads: int | None = None) -> dict[str, Any]:
    """The spread of the members' means, its percentile bootstrap interval and the
    permutation p (module doc). ``values``: each member's per-example values (each non-empty)."""
    means = np.array([v.mean() for v in values])
    observed = float(_spread(means))
    boot = np.column_stack([weighted_sums(v, seed=seed, resamples=resamples, threads=threads)[:, 0] / v.size
                            for v in values])
    t = _spread(boot)
    lo, hi = (1.0 - confidence) / 2.0, 1.0 - (1.0 - confidence) / 2.0
    pooled = np.concatenate(values)
    labels = np.repeat(np.arange(len(values)), [v.size for v in values])
    sizes = np.array([v.size for v in values], dtype=np.float64)
    rng = np.random.default_rng([seed & 0xFFFFFFFF, _PERM_SALT])
    perm = np.empty(resamples)
    for b in range(resamples):
        lab = rng.permutation(labels)
        perm[b] = _spread(np.bincount(lab, weights=pooled, minlength=len(values)) / sizes)
    hits = perm >= observed * (1 - 1e-9) - 1e-12      # ties up to rounding count as extreme
    return {"spread": observed, "means": means, "ci_low": float(np.quantile(t, lo)),
            "ci_high": float(np.quantile(t, hi)), "p": float((1 + hits.sum()) / (1 + resamples))}


def family_rows(j: pl.DataFrame, label: str, cfg: Any, schema: dict[str, Any]) -> list[dict[str, Any]]:
    """Summary rows (kind ``family``) of every family with >= 2 members in the paired
    examples ``j`` of the quantized model ``label``."""
    if j.height == 0 or "task" not in j.columns:
        return []
    rows = []
    for fam, members in family_members(j["task"].unique(maintain_order=True).to_list()).items():
        jt = j.filter(pl.col("task") == members[0])
        headline = get_task_kind(jt["kind"][0] if "kind" in jt.columns else None).headline[0]
        for what, metric in (("headline", f"{headline}_change_spread"), ("mean_kl", "mean_kl_spread")):
            vals = {m: member_values(j, m, what) for m in members}
            vals = {m: v for m, v in vals.items() if v.size}
            if len(vals) < 2:
                continue
            res = spread_test(list(vals.values()), resamples=int(cfg.resamples), seed=int(cfg.seed),
                              confidence=float(cfg.confidence), threads=cfg.threads)
            row = {k: None for k in schema}
            row.update(model=label, task=fam, task_kind="family", metric=metric, kind="family",
                       n=int(sum(v.size for v in vals.values())), diff=res["spread"], null=0.0,
                       ci_low=res["ci_low"], ci_high=res["ci_high"], pct_low=res["ci_low"], pct_high=res["ci_high"],
                       ci_method="percentile", p=res["p"], test=TEST)
            if "p_perm" in row:
                row["p_perm"] = res["p"]
            rows.append(row)
    return rows
