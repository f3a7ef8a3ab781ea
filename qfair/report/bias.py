"""The report's bias section: per bias benchmark, per group, the base and the
quantized models' scores with their bootstrap intervals, and the table of
tested changes (the ``bias`` table of ``qfair analyze``)."""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from qfair.report.common import Figure, Section, _img, _plt, _safe, model_colors, table_html
from qfair.report.data import AnalysisData, ReportError

__all__ = ["load_bias", "bias_figures", "bias_section", "SIG_COLUMN"]

# bars and rows are marked when both tests agree: the larger of the Holm-adjusted bootstrap and
# permutation p-values is below 0.05 (a bootstrap over a few examples can agree on every resample)
SIG_COLUMN = "p_holm_both"
_LABELS = {
    "disamb_bias_score": "bias score, disambiguated contexts (0 = unbiased)",
    "amb_bias_score": "bias score, ambiguous contexts (0 = unbiased)",
    "accuracy_disamb": "accuracy, disambiguated contexts",
    "accuracy_amb": "accuracy, ambiguous contexts",
    "icat": "ICAT (0-100, ideal 100)", "ss": "stereotype score SS (0-100, ideal 50)",
    "lms": "language-model score LMS (0-100, ideal 100)", "acc": "accuracy",
    "pct_stereotype": "share of pairs where the stereotype is likelier (ideal 0.5)",
    "subgroup_auc": "subgroup AUC (hateful vs not, texts about the group; ideal 1)",
    "bpsn_auc": "BPSN AUC (background hateful vs the group's non-hateful; ideal 1)",
    "bnsp_auc": "BNSP AUC (the group's hateful vs background non-hateful; ideal 1)",
}


def load_bias(data: AnalysisData) -> pl.DataFrame:
    """The analysis directory's bias table (Parquet, else CSV) with ``p_holm_both``; empty when there is none."""
    d = Path(data.path)
    pq, csv = d / "bias.parquet", d / "bias.csv"
    df = pl.DataFrame()
    try:
        if pq.is_file():
            df = pl.read_parquet(pq)
        elif csv.is_file() and csv.stat().st_size:
            df = pl.read_csv(csv, infer_schema_length=None)
    except (OSError, pl.exceptions.PolarsError, ValueError) as e:
        raise ReportError(f"{pq if pq.is_file() else csv}: cannot be read as the bias table "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if df.height and {"p_holm", "p_perm_holm"} <= set(df.columns):
        df = df.with_columns(pl.max_horizontal(pl.col("p_holm").fill_nan(None), pl.col("p_perm_holm").fill_nan(None))
                             .alias(SIG_COLUMN))
    return df


def _main_axis(kind: str) -> str | None:
    from qfair.metrics.bias import BIAS_KINDS

    bk = BIAS_KINDS.get(kind)
    return None if bk is None else bk.main_axis


def _panel_metrics(kind: str, available: set[str]) -> list[str]:
    from qfair.metrics.task_kinds import get_task_kind

    names = [m for m in get_task_kind(kind).headline if m in available]
    if kind == "crows_pairs" and "pct_stereotype" in available:
        names = ["pct_stereotype"]
    return names


def _f(v: Any) -> float:
    return float("nan") if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def bias_figures(data: AnalysisData) -> list[Figure]:
    """One figure per bias task: a panel per headline score, groups of the task's
    own axis (and the whole task) on the y axis, base and quantized bars with
    their percentile bootstrap intervals."""
    bt = load_bias(data)
    if bt.height == 0:
        return []
    plt = _plt()
    models = [m for m in data.models if m in set(bt["model"])] or bt["model"].unique(maintain_order=True).to_list()
    colors = model_colors(models)
    level = float(data.settings.get("confidence") or 0.95)
    out = []
    for task in bt["task"].unique(maintain_order=True).to_list():
        t = bt.filter(pl.col("task") == task)
        kind = t["task_kind"][0]
        axis = _main_axis(kind)
        t = t.filter((pl.col("axis") == "task") | (pl.col("axis") == axis))
        grouped = set(t.filter(pl.col("axis") == axis)["metric"])
        metrics = _panel_metrics(kind, grouped)
        if not metrics:
            continue
        groups = ["(all)"] + sorted({g for g in t.filter(pl.col("axis") == axis)["group"].to_list() if g})
        k = len(models) + 1
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics) + 1.5, 0.34 * len(groups) * k + 1.8),
                                 squeeze=False, sharey=True)
        y0 = np.arange(len(groups))
        h = 0.8 / k
        for ax, metric in zip(axes[0], metrics):
            tm = t.filter(pl.col("metric") == metric)

            # a per-group score without a whole-task value (hate speech's AUCs): (all) shows its
            # aggregate over the groups, the <score>_mean row (the power mean)
            mean = t.filter(pl.col("metric") == f"{metric}_mean")

            def get(model: str, g: str, tm: pl.DataFrame = tm, mean: pl.DataFrame = mean) -> dict[str, Any] | None:
                whole = g == "(all)"
                sel = tm.filter((pl.col("model") == model) & (pl.col("group").is_null() if whole else pl.col("group") == g))
                if whole and sel.height == 0:
                    sel = mean.filter(pl.col("model") == model)
                return sel.row(0, named=True) if sel.height else None

            series = [("base", models[0], "base")] + [(m, m, "quant") for m in models]
            for i, (label, model, who) in enumerate(series):
                rows = [get(model, g) for g in groups]
                x = np.array([_f(r[who]) if r else np.nan for r in rows])
                lo = np.array([_f(r[f"{who}_low"]) if r else np.nan for r in rows])
                hi = np.array([_f(r[f"{who}_high"]) if r else np.nan for r in rows])
                err = np.vstack([x - lo, hi - x])
                err = np.where(np.isfinite(err), np.maximum(err, 0), 0)
                pos = y0 - 0.4 + h * (i + 0.5)
                ax.barh(pos, np.nan_to_num(x), height=h * 0.92, xerr=err, color=colors[label], alpha=0.85,
                        error_kw={"elinewidth": 1, "capsize": 2}, label=label if who == "base" else
                        f"{label} (* both tests, Holm p < 0.05)")
                ax.plot(x, pos, "o", ms=2.5, color="#111111" if who == "base" else colors[label])  # zero stays visible
                if who == "quant":
                    for yy, xx, r in zip(pos, x, rows):
                        if r and r.get(SIG_COLUMN) is not None and _f(r[SIG_COLUMN]) < 0.05 and np.isfinite(xx):
                            ax.annotate("*", (xx, yy), xytext=(4, -4), textcoords="offset points", fontsize=11,
                                        color=colors[label], fontweight="bold")
                for yy, xx in zip(pos, x):
                    if not np.isfinite(xx):
                        ax.annotate("n/a", (0, yy), xytext=(2, -3), textcoords="offset points", fontsize=6,
                                    color="#777777")
            ideal = tm["ideal"].drop_nulls()
            if ideal.len():
                ax.axvline(float(ideal[0]), color="#888888", lw=1, ls="--", label="ideal")
            ax.set_xlabel(_LABELS.get(metric, metric), fontsize=8)
            ax.set_title(metric, fontsize=9)
            ax.grid(alpha=0.3, axis="x")
        ns = {r["group"]: r["n"] for r in t.iter_rows(named=True)}
        axes[0][0].set_yticks(y0)
        axes[0][0].set_yticklabels(groups, fontsize=8)
        axes[0][0].invert_yaxis()
        axes[0][0].set_ylabel(f"{axis} (n = {ns.get(None)} examples in all)")
        axes[0][-1].legend(fontsize=7, loc="best")
        fig.suptitle(f"{task}: bias scores per {axis}, base vs {', '.join(models)}", fontsize=10)
        fig.tight_layout()
        out.append(Figure(f"bias_{_safe(task)}", fig, f"Bias scores on {task}",
                          f"Each score for the base and the quantized model(s), per {axis} and for the whole task, "
                          f"with {100 * level:g}% percentile bootstrap intervals (the score recomputed in every "
                          f"resample); * marks a group whose change has both Holm-adjusted p-values (bootstrap and permutation) "
                          "below 0.05 over the bias table; "
                          "dashed: the value of an unbiased (ideal) model; n/a: undefined (e.g. no non-unknown "
                          "answer); hate speech's (all): the power mean (p = −5) of the AUC over the groups.",
                          "bias"))
    return out


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def bias_section(data: AnalysisData, figs: list[Figure], table_html: Any, img: Any) -> str:
    """The HTML of the bias section (``table_html`` and ``img`` are the report's own helpers)."""
    bt = load_bias(data)
    if bt.height == 0:
        return ("<p class='meta'>No bias benchmark in this analysis (tasks bbq, bbq_3choice, stereoset_*, "
                "winogender_*, crows_pairs_*, hate_speech).</p>")
    body = "".join(img(f) for f in figs if f.section == "bias")
    cols = ["model", "task", "axis", "group", "metric", "n", "base", "quant", "diff", "ci_low", "ci_high", "p",
            "p_holm", "p_perm", "p_perm_holm", "undefined", "detail"]
    whole = bt.filter((pl.col("axis") == "task") | pl.col("metric").str.ends_with("_disparity"))
    body += ("<h3>Whole-task scores and disparities</h3>" + table_html(whole, cols, sig_col=SIG_COLUMN) +
             "<p class='meta'>diff = quantized − base with its percentile bootstrap interval; p inverts that "
             "interval (interval excludes 0 ⇔ p &lt; 0.05 before adjustment); p_perm: paired permutation test "
             "(answers swapped per example); p_holm, p_perm_holm: Holm over every row of the bias table (p_bh in "
             "the file). Bold rows, and * in the figures: both adjusted p-values below 0.05 — a bootstrap over a "
             "handful of examples can agree on every resample, the permutation test does not. undefined = share of resamples where a score is undefined (left out of the "
             "interval). Disparity = max − min of a score over the groups of the axis (detail names them). "
             "BBQ's *_lmeval rows reproduce lm-evaluation-harness's numbers (0 when no biased answer is given); "
             "the unsuffixed scores follow the BBQ paper (undefined when every answer is 'unknown'). "
             "hate_speech: AUCs of P(hateful) per identity group (subgroup, BPSN, BNSP; Borkan et al. 2019), "
             "their power means (p = −5) and Jigsaw's final_metric; no p_perm (the bootstrap p is their test); "
             "*_change_disparity tests that the change is equal across groups.</p>")
    body += ("<details><summary>Every row of the bias table "
             f"({bt.height} rows: per group, per stereotyped group)</summary>" +
             table_html(bt, cols, sig_col=SIG_COLUMN) + "</details>")
    return body


def _section(data: AnalysisData, figs: list[Figure]) -> str:
    return bias_section(data, figs, table_html, _img)


def _empty(data: AnalysisData, figs: list[Figure], html: str) -> bool:
    return not any(f.section == "bias" for f in figs) and "No bias benchmark in this analysis" in html


SECTION = Section("bias", "Bias benchmarks", "the bias task kinds (qfair.metrics.bias)", ("summary", "groups"),
                  _section, (bias_figures,), _empty)
