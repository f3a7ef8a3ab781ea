"""The report's groups section: each task's per-group change of its headline
metric, sorted by effect, against the whole task's."""
from __future__ import annotations

import numpy as np
import polars as pl

from qfair.report.common import Figure, Section, _figs, _plt, _safe, model_colors, table_html
from qfair.report.data import AnalysisData
from qfair.report.lookup import _conf_level, _pct, _summary_value, _task_kind

__all__ = ["group_view", "fig_groups", "groups_section", "SECTION"]


def _group_metric(data: AnalysisData, task: str) -> str:
    """The metric a task's groups are compared on: its kind's primary headline metric."""
    return _task_kind(data, task).headline[0]


_METRIC_AXIS = {
    "pct_stereotype": "Δ share of pairs scored stereotype-consistent (quantized − base)",
    "acc": "Δaccuracy (quantized − base, fraction)",
}


def group_view(data: AnalysisData) -> pl.DataFrame:
    """The group rows the report shows: per task with two or more groups, the
    task kind's primary headline metric (pct_stereotype for CrowS-Pairs, mc2 for
    TruthfulQA MC2, else acc), sorted by effect (largest absolute difference
    first, averaged over models)."""
    g = data.groups
    if g.height == 0:
        return pl.DataFrame()
    parts = []
    for t in g["task"].unique(maintain_order=True).to_list():
        gt = g.filter(pl.col("task") == t)
        if gt["group"].n_unique() < 2:
            continue
        metric = _group_metric(data, t)
        sub = gt.filter(pl.col("metric") == metric)
        if sub.height == 0:
            continue
        eff = sub.group_by("group").agg(pl.col("diff").abs().mean().alias("_effect"))
        sub = sub.join(eff, on="group").sort(["_effect", "group"], descending=[True, False]).drop("_effect")
        parts.append(sub)
    return pl.concat(parts, how="diagonal") if parts else pl.DataFrame()


def fig_groups(data: AnalysisData) -> list[Figure]:
    plt = _plt()
    view = group_view(data)
    if view.height == 0:
        return []
    colors = model_colors(data.models)
    level = _conf_level(data)
    out = []
    for t in view["task"].unique(maintain_order=True).to_list():
        v = view.filter(pl.col("task") == t)
        metric = v["metric"][0]
        groups = v["group"].unique(maintain_order=True).to_list()
        k = len(data.models)
        fig, ax = plt.subplots(figsize=(7.6, 0.45 * len(groups) * max(1, 0.6 * k) + 2.6))
        y0 = np.arange(len(groups))
        for i, m in enumerate(data.models):
            vm = v.filter(pl.col("model") == m)
            d = {r["group"]: r for r in vm.iter_rows(named=True)}
            x = np.array([d[g]["diff"] if g in d and d[g]["diff"] is not None else np.nan for g in groups])
            lo = np.array([d[g]["ci_low"] if g in d and d[g]["ci_low"] is not None else np.nan for g in groups])
            hi = np.array([d[g]["ci_high"] if g in d and d[g]["ci_high"] is not None else np.nan for g in groups])
            pos = y0 + (i - (k - 1) / 2) * 0.7 / max(k, 1)
            err = np.vstack([x - lo, hi - x])
            err = np.where(np.isfinite(err), np.maximum(err, 0), 0)
            ax.errorbar(x, pos, xerr=err, fmt="o", color=colors[m], capsize=3, ms=5,
                        label=f"{m} − base ({_pct(level)} interval)")
            whole = _summary_value(data, m, t, metric, "diff")
            if whole is not None:
                ax.axvline(whole, color=colors[m], lw=1, ls=":", label=f"{m}: whole task ({whole:+.3f})")
        ax.axvline(0, color="#888888", lw=1, ls="--")
        ns = {r["group"]: r["n"] for r in v.iter_rows(named=True)}
        ax.set_yticks(y0)
        ax.set_yticklabels([f"{g} (n={ns.get(g)})" for g in groups], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(_METRIC_AXIS.get(metric, f"Δ{metric} (quantized − base)"))
        ax.set_ylabel("group (sorted by |effect|)")
        ax.set_title(f"{t}: per-group change in {metric}\nbase vs {', '.join(data.models)}", fontsize=10)
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, frameon=False)
        fig.tight_layout()
        out.append(Figure(f"groups_{_safe(t)}", fig, f"Per-group differences on {t}",
                          f"Difference in {metric} between the quantized and the base model within each group, "
                          "with the groups table's intervals (paired bootstrap; where no answer in the group "
                          "changed, the Wilson bound on the share of changed answers), sorted by the size of the "
                          "effect; dotted lines mark the whole task's difference.", "groups"))
    return out


GROUP_COLUMNS = ["model", "task", "group", "metric", "n", "base", "quant", "diff", "ci_low", "ci_high", "ci_method",
                 "gap", "p", "p_holm", "p_bh"]


def groups_section(data: AnalysisData, figs: list[Figure]) -> str:
    gv = group_view(data)
    return (_figs(figs, "groups") +
            (("<h3>Group rows, sorted by effect</h3>" + table_html(gv, GROUP_COLUMNS, sig_col="p_holm"))
             if gv.height else "<p class='meta'>No task has two or more groups.</p>") +
            ("<p class='meta'>gap = the group's difference minus the whole task's; p_holm / p_bh adjusted "
             "over all rows of the groups table.</p>" if gv.height else ""))


def _empty(data: AnalysisData, figs: list[Figure], html: str) -> bool:
    return _no_figures(figs, "groups") and group_view(data).height == 0


def _no_figures(figs: list[Figure], section: str) -> bool:
    return not any(f.section == section for f in figs)


SECTION = Section("groups", "Groups", "task kinds whose examples have groups", ("groups", "summary"),
                  groups_section, (fig_groups,), _empty)
