"""The report's uncertainty section: the shift between the models by stratum
of the base model's uncertainty, and the tests of whether it grows with it."""
from __future__ import annotations

import math

import numpy as np
import polars as pl

from qfair.report.common import Figure, Section, _figs, _plt, model_colors, table_html
from qfair.report.data import AnalysisData
from qfair.report.lookup import _conf_level, _pct, _summary_value, range_label

__all__ = ["strata_view", "uncertainty_view", "fig_strata", "fig_uncertainty_tests", "strata_section", "SECTION"]

SCATTER_POINTS = 4_000  # at most this many examples per model in the strata scatter
STRATA_SHIFT = ("choice_js", "Jensen–Shannon distance of the choice distributions (base 2)")
TEST_SHIFTS = (("choice_js", "JS distance, choices"), ("abs_dconf", "|Δconfidence|"),
               ("abs_dp_gold", "|Δp(gold)|"), ("flip", "flip"), ("kl_all_mean", "mean token KL"))
TOKEN_TEST_SHIFTS = (("kl_pq", "token KL (rows)"), ("top1_change", "top-1 change (rows)"))


def strata_view(data: AnalysisData) -> pl.DataFrame:
    """The strata table of the analysis (per model, task and stratum; its means and
    intervals come from the analysis' bootstrap), in model, task, stratum order."""
    st = data.strata
    if st.height == 0 or "stratum" not in st.columns:
        return pl.DataFrame()
    order = {m: i for i, m in enumerate(data.models)}
    torder = {t: i for i, t in enumerate(data.tasks)}
    return (st.with_columns(pl.col("model").replace_strict(order, default=len(order)).alias("_m"),
                            pl.col("task").replace_strict(torder, default=len(torder)).alias("_t"))
            .sort(["_m", "_t", "stratum"]).drop("_m", "_t"))


def uncertainty_view(data: AnalysisData) -> pl.DataFrame:
    """The summary's uncertainty rows (Spearman and top-minus-bottom stratum), with the
    uncertainty and the shift split out of the metric name."""
    s = data.summary
    if s.height == 0 or "kind" not in s.columns:
        return pl.DataFrame()
    u = s.filter(pl.col("kind").is_in(["uncertainty", "uncertainty_token"]))
    if u.height == 0:
        return pl.DataFrame()
    parts = u["metric"].str.extract_groups(r"^(\w+)\(([^,]+),([^)]+)\)$")
    return u.with_columns(parts.struct.field("1").alias("statistic"), parts.struct.field("2").alias("uncertainty"),
                          parts.struct.field("3").alias("shift"))


def _p_short(p: float | None) -> str:
    if p is None:
        return "–"
    return "p<1e-4" if p < 1e-4 else f"p={p:.2g}"


def fig_strata(data: AnalysisData) -> list[Figure]:
    """Per task: the mean shift per base-uncertainty stratum, and the Spearman test."""
    plt = _plt()
    view = strata_view(data)
    if view.height == 0 or STRATA_SHIFT[0] not in view.columns:
        return []
    colors = model_colors(data.models)
    level = _conf_level(data)
    by = view["by"][0] if "by" in view.columns else "confidence"
    unc = "1-conf" if by == "confidence" else "entropy"
    tasks = [t for t in data.tasks if view.filter(pl.col("task") == t).height]
    ncol = min(4, len(tasks))
    nrow = int(math.ceil(len(tasks) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.9 * ncol + 0.4, 4.1 * nrow + 0.9), squeeze=False)
    k = len(data.models)
    col, what = STRATA_SHIFT
    for ax, t in zip(axes.ravel(), tasks):
        first = None
        for i, m in enumerate(data.models):
            v = view.filter((pl.col("model") == m) & (pl.col("task") == t)).sort("stratum")
            if v.height == 0 or v[col].null_count() == v.height:
                continue
            first = first if first is not None else v
            x = np.arange(v.height) + (i - (k - 1) / 2) * 0.12
            y = v[col].cast(pl.Float64).to_numpy()
            lo = v[f"{col}_low"].cast(pl.Float64).to_numpy()
            hi = v[f"{col}_high"].cast(pl.Float64).to_numpy()
            err = np.where(np.isfinite(np.vstack([y - lo, hi - y])), np.maximum(np.vstack([y - lo, hi - y]), 0), 0)
            rho = _summary_value(data, m, t, f"spearman({unc},{col})", "diff")
            rlo = _summary_value(data, m, t, f"spearman({unc},{col})", "ci_low")
            rhi = _summary_value(data, m, t, f"spearman({unc},{col})", "ci_high")
            p = _summary_value(data, m, t, f"spearman({unc},{col})", "p")
            test = ("ρ undefined" if rho is None else
                    f"ρ {rho:+.2f} [{rlo:+.2f}, {rhi:+.2f}], {_p_short(p)}")
            ax.errorbar(x, y, yerr=err, marker="o", ms=4.5, lw=1.4, capsize=2.5, color=colors[m],
                        label=f"{m}: {test}")
        if first is None:
            fig.delaxes(ax)
            continue
        ax.set_xticks(np.arange(first.height))
        ax.set_xticklabels([range_label(a, b).replace("–", "–\n") + f"\nn={n}" for a, b, n in
                            zip(first["lo"], first["hi"], first["n"])], fontsize=6)
        ax.set_title(t, fontsize=9)
        ax.set_xlabel(f"base {by} stratum (range; examples)", fontsize=7.5)
        ax.set_ylabel("mean JS distance (0–1)", fontsize=7.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.38), frameon=False,
                  title=f"Spearman({unc}, JS) [{_pct(level)} CI], p", title_fontsize=6)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes.ravel()[len(tasks):]:
        fig.delaxes(ax)
    fig.suptitle(f"Where the base model was uncertain: {what}, per base-{by} stratum, "
                 f"base vs {', '.join(data.models)}\n(means with {_pct(level)} bootstrap intervals; legend: the "
                 f"rank correlation of the base model's uncertainty with the shift over examples)", fontsize=9.5)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    return [Figure("confidence_strata", fig, "Uncertainty strata",
                   f"Per task, the mean {what} between the base and the quantized model in equal-count strata of "
                   f"the base model's {by}, with bootstrap intervals from the strata table. The legend gives "
                   f"Spearman's correlation between the base model's uncertainty ({unc}) and the shift, with its "
                   "bootstrap interval and p (the test of the study's claim that quantization moves the "
                   "predictions most where the base model was uncertain).", "strata")]


def fig_uncertainty_tests(data: AnalysisData) -> list[Figure]:
    """Forest plot: Spearman's rho of base entropy against each shift, per task and model."""
    plt = _plt()
    u = uncertainty_view(data)
    if u.height == 0:
        return []
    u = u.filter(pl.col("statistic") == "spearman")
    colors = model_colors(data.models)
    level = _conf_level(data)
    alpha = 1 - level
    panels = [(s, lab, "entropy") for s, lab in TEST_SHIFTS] + [(s, lab, "entropy_p") for s, lab in TOKEN_TEST_SHIFTS]
    panels = [pn for pn in panels if u.filter((pl.col("shift") == pn[0]) & (pl.col("uncertainty") == pn[2])).height]
    if not panels:
        return []
    tasks = data.tasks
    ncol = min(4, len(panels))
    nrow = int(math.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol + 1.6, 0.3 * len(tasks) * nrow + 1.6 * nrow + 0.6),
                             sharey=True, squeeze=False)
    k = len(data.models)
    y0 = np.arange(len(tasks))
    for ax, (shift, lab, unc) in zip(axes.ravel(), panels):
        for i, m in enumerate(data.models):
            pos = y0 + (i - (k - 1) / 2) * 0.3
            for yi, t in zip(pos, tasks):
                r = u.filter((pl.col("model") == m) & (pl.col("task") == t) & (pl.col("shift") == shift) &
                             (pl.col("uncertainty") == unc))
                if r.height == 0 or r["diff"][0] is None:
                    continue
                d, lo, hi = r["diff"][0], r["ci_low"][0], r["ci_high"][0]
                ph = r["p_holm"][0] if "p_holm" in r.columns else None
                filled = ph is not None and ph < alpha
                ax.errorbar([d], [yi], xerr=[[max(d - lo, 0)], [max(hi - d, 0)]], fmt="o", ms=4.5, capsize=2,
                            color=colors[m], mfc=colors[m] if filled else "white", lw=1.1)
        ax.axvline(0, color="#888888", lw=1, ls="--")
        ax.set_xlim(-1.05, 1.05)
        ax.set_title(f"{lab}\nvs base {'token entropy' if unc == 'entropy_p' else 'choice entropy'}", fontsize=8.5)
        ax.set_xlabel("Spearman ρ", fontsize=8)
        ax.grid(alpha=0.3, axis="x")
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(panels):]:
        fig.delaxes(ax)
    axes[0][0].invert_yaxis()  # shared by every panel
    for row in axes:
        row[0].set_yticks(y0)
        row[0].set_yticklabels(tasks, fontsize=7.5)
        row[0].set_ylabel("task", fontsize=8)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", color=colors[m], ls="none", label=m) for m in data.models]
    handles.append(Line2D([], [], marker="o", color="#444444", mfc="white", ls="none",
                          label=f"open: Holm-adjusted p ≥ {alpha:g}; filled: < {alpha:g}"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7.5, frameon=False)
    fig.suptitle(f"Does quantization move the predictions most where the base model was uncertain? "
                 f"Spearman ρ with {_pct(level)} bootstrap intervals", fontsize=10)
    fig.tight_layout(rect=(0, 0.4 / fig.get_figheight(), 1, 1 - 0.35 / fig.get_figheight()))
    return [Figure("uncertainty_tests", fig, "Uncertainty and shift: rank correlations",
                   "Spearman's correlation between the base model's uncertainty (choice entropy; token entropy for "
                   "the token-level panels, bootstrap over examples) and each per-example shift, per task, with "
                   "percentile bootstrap intervals; a filled marker survives Holm's correction over the summary "
                   "table. Positive: larger shifts where the base model was less certain.", "strata")]


# ---------------------------------------------------------------------------
# accuracy and flips


UNCERTAINTY_COLUMNS = ["model", "task", "metric", "n", "diff", "ci_low", "ci_high", "p", "p_perm", "p_holm", "p_bh"]


def strata_section(data: AnalysisData, figs: list[Figure]) -> str:
    sv = strata_view(data)
    uv = uncertainty_view(data)
    return (_figs(figs, "strata") +
            ("<h3>Tests: does the shift grow with the base model's uncertainty?</h3>" +
             table_html(uv.filter(pl.col("statistic") == "spearman").sort("p", nulls_last=True),
                        UNCERTAINTY_COLUMNS, max_rows=60, sig_col="p_holm") +
             "<p class='meta'>spearman(u,s): rank correlation over examples (token rows for kind "
             "uncertainty_token, resampled by example) of the base model's uncertainty u with the shift s, "
             "bootstrap interval and the p that inverts it; p_perm: permutation test. strata_diff rows "
             "(mean shift in the most minus the least uncertain stratum) are in the summary table.</p>"
             if uv.height else "") +
            ("<details><summary>Per-task strata (strata table of qfair analyze)</summary>" +
             table_html(sv) + "</details>" if sv.height else ""))


def _empty(data: AnalysisData, figs: list[Figure], html: str) -> bool:
    return _no_figures(figs, "strata") and uncertainty_view(data).height == 0 and strata_view(data).height == 0


def _no_figures(figs: list[Figure], section: str) -> bool:
    return not any(f.section == section for f in figs)


SECTION = Section("strata", "Uncertainty: strata and tests", "every analysis", ("strata", "summary", "examples"),
                  strata_section, (fig_strata, fig_uncertainty_tests), _empty)
