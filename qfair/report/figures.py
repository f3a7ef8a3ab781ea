"""The report's figures, drawn with matplotlib's Agg backend from the analysis tables.

Each ``fig_*`` function returns a list of :class:`Figure` (a file name, a
matplotlib figure, a title and a caption); ``make_figures`` draws them all and
saves PNGs. Every figure labels its axes with units, says in its title what is
compared, and has a legend. Every interval drawn here is read from the
analysis tables (bootstrap intervals of the summary, groups and strata
tables; Wilson intervals of the calibration bins and flip rates); the only
statistic computed here is the Wilson interval of a plain accuracy level.
Figures about correct answers (reliability, accuracy, flips) show only the
tasks whose kind has gold answers.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from qfair.report.common import BASE_COLOR, Figure, _plt, _safe, model_colors  # noqa: F401 - re-exported
from qfair.report.data import AnalysisData

__all__ = ["Figure", "make_figures", "KL_PERCENTILES", "kl_percentiles", "FIGURE_FUNCS", "model_colors",
           "accuracy_view", "strata_view", "flip_table", "group_view", "range_label", "gold_tasks",
           "uncertainty_view"]

DPI = 110
# llama.cpp's KL summary: max, 99.9, 99, 95, 90, median, 10, 5, 1, 0.1 percentiles, min
KL_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.1)
KL_FLOOR = 1e-9  # zero KL values are drawn at this floor on the log axis
CDF_POINTS = 20_001  # larger token tables are drawn through this many quantiles
SCATTER_POINTS = 4_000  # at most this many examples per model in the strata scatter


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


def _ece_label(data: AnalysisData, model: str, task: str, role: str) -> str:
    src = data.models[0] if role == "base" and data.models else model
    v = _summary_value(data, src, task, "ece", role)
    if v is None:
        return model
    lo = _summary_value(data, src, task, "ece", f"{role}_low")
    hi = _summary_value(data, src, task, "ece", f"{role}_high")
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
    return f"{model}: ECE {v:.3f}{ci}"


def fig_reliability(data: AnalysisData) -> list[Figure]:
    plt = _plt()
    cal = data.calibration
    if cal.height == 0:
        return []
    binning = "auto" if "auto" in set(cal["binning"].to_list()) else "width"
    colors = model_colors(data.models)
    level = _conf_level(data)
    ece_bins = int(data.settings.get("bins") or 15)
    out = []
    for task in gold_tasks(data):
        sub = cal.filter((pl.col("task") == task) & (pl.col("binning") == binning))
        if sub.height == 0:
            continue
        series = [("base", sub.filter(pl.col("role") == "base"))]
        series += [(m, sub.filter((pl.col("role") == "quant") & (pl.col("model") == m))) for m in data.models]
        series = [(m, df.sort("bin")) for m, df in series if df.height]
        n_ex = int(series[0][1]["n"].sum())
        n_bins = series[0][1].filter(pl.col("n") > 0).height
        fig, (ax, axc) = plt.subplots(2, 1, figsize=(6.6, 6.4), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.2], "hspace": 0.08})
        ax.plot([0, 1], [0, 1], ls="--", color="#888888", lw=1, label="perfect calibration")
        k = len(series)
        for i, (m, df) in enumerate(series):
            ok = df.filter(pl.col("n") > 0)
            x, y = ok["conf_mean"].to_numpy(), ok["acc_mean"].to_numpy()
            role = "base" if m == "base" else "quant"
            lab = _ece_label(data, m, task, role)
            if "acc_low" in ok.columns:
                err = np.vstack([y - ok["acc_low"].to_numpy(), ok["acc_high"].to_numpy() - y])
                ax.errorbar(x, y, yerr=np.maximum(err, 0), marker="o", ms=5, lw=1.4, capsize=3,
                            color=colors.get(m), label=lab, alpha=0.9)
            else:
                ax.plot(x, y, marker="o", ms=5, lw=1.4, color=colors.get(m), label=lab, alpha=0.9)
            # lower panel: every example's confidence (a rug), bin edges and counts
            ex = data.examples
            src = data.models[0] if m == "base" and data.models else m
            col = "base_conf" if m == "base" else "quant_conf"
            if ex.height and col in ex.columns:
                c = ex.filter((pl.col("model") == src) & (pl.col("task") == task))[col].cast(pl.Float64).to_numpy()
                c = c[np.isfinite(c)]
                axc.plot(c, np.full(c.size, i), ls="none", marker="|", ms=11, mew=1.0, color=colors.get(m),
                         alpha=0.7, label=m)
            for r in ok.iter_rows(named=True):
                if float(r["hi"]) < 1.0:
                    axc.plot([r["hi"]] * 2, [i - 0.42, i + 0.42], color="#555555", lw=0.9)
                axc.annotate(f"n={int(r['n'])}", (float(r["conf_mean"]), i - 0.3), ha="center", va="bottom",
                             fontsize=6.5, color="#222222")
        ax.set_xlim(-0.01, 1.015)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("accuracy in bin (fraction correct)")
        how = (f"{n_bins} equal-mass bins of about {n_ex // max(n_bins, 1)} examples"
               if binning == "auto" else f"{n_bins} non-empty equal-width bins")
        ax.set_title(f"{task}: reliability, base vs {', '.join(data.models)}\n({how}, n = {n_ex}; "
                     f"{_pct(level)} Wilson intervals)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7.5, frameon=True,
                  title=f"ECE ({ece_bins} equal-width bins) [{_pct(level)} bootstrap CI]", title_fontsize=7.5)
        axc.set_xlabel("confidence (probability of the predicted choice)")
        axc.set_ylabel("examples", fontsize=8)
        axc.set_yticks(range(k))
        axc.set_yticklabels([m for m, _ in series], fontsize=7)
        axc.set_ylim(k - 0.5, -0.5)
        axc.legend(loc="upper left", fontsize=6.5, ncol=max(1, k), frameon=False, bbox_to_anchor=(0, -0.32))
        axc.grid(alpha=0.3, axis="x")
        fig.subplots_adjust(left=0.14, right=0.97, top=0.89, bottom=0.13)
        out.append(Figure(f"reliability_{_safe(task)}", fig, f"Reliability on {task}",
                          "Accuracy against mean confidence (top-label: the probability of the chosen answer) "
                          "in bins chosen by the number of examples (equal-mass, about ten per bin), with Wilson "
                          "intervals; the diagonal is perfect calibration. Lower panel: each example's confidence "
                          "per model, the bin edges (grey) and the examples per bin. Legend: each model's ECE with its bootstrap interval from the "
                          "summary table.", "calibration"))
    return out


# ---------------------------------------------------------------------------
# token KL


def kl_percentiles(kl: np.ndarray) -> dict[str, float]:
    """llama.cpp-style KL statistics: mean ± standard error, max, the KL_PERCENTILES
    (linear interpolation between order statistics), min."""
    x = np.asarray(kl, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {}
    out = {"n": float(x.size), "mean": float(x.mean()),
           "stderr": float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else float("nan"),
           "max": float(x.max())}
    for p in KL_PERCENTILES:
        out[f"p{p:g}"] = float(np.percentile(x, p))
    out["min"] = float(x.min())
    return out


def fig_token_kl(data: AnalysisData) -> list[Figure]:
    plt = _plt()
    tok = data.tokens
    if tok.height == 0 or "kl_pq" not in tok.columns:
        return []
    colors = model_colors(data.models)
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    drawn = 0
    floor_used = False
    pct_label_done = False
    for m in data.models:
        kl = tok.filter(pl.col("model") == m)["kl_pq"].cast(pl.Float64).to_numpy()
        kl = kl[np.isfinite(kl)]
        if kl.size == 0:
            continue
        st = kl_percentiles(kl)
        floor_used |= bool((kl < KL_FLOOR).any())
        if kl.size > CDF_POINTS:  # the curve at CDF_POINTS quantiles draws the same picture
            ys = np.linspace(0, 1, CDF_POINTS)
            xs = np.maximum(np.quantile(kl, ys), KL_FLOOR)
        else:
            xs = np.sort(np.maximum(kl, KL_FLOOR))
            ys = np.arange(1, xs.size + 1) / xs.size
        ax.step(xs, ys, where="post", color=colors[m], lw=1.8,
                label=f"{m}: mean {st['mean']:.4f} nats, median {st['p50']:.3g}, P99 {st['p99']:.3g} "
                      f"(n = {kl.size:,} tokens)")
        px = [max(st[f"p{p:g}"], KL_FLOOR) for p in KL_PERCENTILES] + [max(st["max"], KL_FLOOR)]
        py = [p / 100 for p in KL_PERCENTILES] + [1.0]
        ax.plot(px, py, ls="none", marker="D", ms=5, mfc="white", mec=colors[m], mew=1.4,
                label=None if pct_label_done else "percentiles 0.1, 1, 5, 10, 50, 90, 95, 99, 99.9 and max")
        pct_label_done = True
        drawn += 1
    if not drawn:
        plt.close(fig)
        return []
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("KL(base ‖ quantized) per token (nats, log scale)")
    ax.set_ylabel("cumulative share of scored tokens")
    ax.set_title(f"Vocabulary-wide token KL: base vs {', '.join(data.models)}\n"
                 "empirical CDF over every scored continuation token", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", fontsize=7.5)
    fig.tight_layout()
    cap = ("Empirical CDF of KL(P‖Q) between the base (P) and quantized (Q) next-token distributions over the "
           "whole vocabulary, one value per scored continuation token, with llama.cpp's percentiles marked.")
    if floor_used:
        cap += f" KL values below {KL_FLOOR:g} nats are drawn at {KL_FLOOR:g}."
    return [Figure("token_kl_cdf", fig, "Token KL distribution", cap, "tokens")]


# ---------------------------------------------------------------------------
# uncertainty strata


# the shift the strata figure draws (defined for every task kind), and the example-level shifts of the tests
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


def accuracy_view(data: AnalysisData) -> pl.DataFrame:
    """Per (model incl. "base", task with gold answers): n, correct count, accuracy and its
    Wilson interval, and the accuracy of guessing (the mean of 1 / number of choices)."""
    from qfair import stats

    ex = data.examples
    if ex.height == 0 or not data.models:
        return pl.DataFrame()
    level = _conf_level(data)
    rows = []
    for m in ["base"] + data.models:
        src = data.models[0] if m == "base" else m
        col = "base_correct" if m == "base" else "quant_correct"
        for t in gold_tasks(data):
            e = ex.filter((pl.col("model") == src) & (pl.col("task") == t))
            c = e[col].cast(pl.Float64).to_numpy()
            fin = np.isfinite(c)
            c = c[fin]
            n, k = int(c.size), int(c.sum())
            if n == 0:
                continue
            lo, hi = stats.wilson([k], [n], level)
            chance = (float(np.mean(1.0 / e["n_choices"].cast(pl.Float64).to_numpy()[fin]))
                      if "n_choices" in e.columns else None)
            rows.append({"model": m, "task": t, "n": n, "correct": k, "acc": k / n, "acc_low": float(lo[0]),
                         "acc_high": float(hi[0]), "chance": chance})
    return pl.DataFrame(rows)


def fig_accuracy(data: AnalysisData) -> list[Figure]:
    plt = _plt()
    tasks = gold_tasks(data)
    view = accuracy_view(data)
    if not tasks or view.height == 0:
        return []
    colors = model_colors(data.models)
    level = _conf_level(data)
    names = ["base"] + data.models
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 0.2 * len(tasks) * len(names) + 2.5),
                                  gridspec_kw={"width_ratios": [1.1, 1]})
    h = 0.8 / len(names)
    y0 = np.arange(len(tasks))
    for i, m in enumerate(names):
        v = {r["task"]: r for r in view.filter(pl.col("model") == m).iter_rows(named=True)}
        acc_a = np.array([v[t]["acc"] if t in v else np.nan for t in tasks])
        lo = np.array([v[t]["acc_low"] if t in v else np.nan for t in tasks])
        hi = np.array([v[t]["acc_high"] if t in v else np.nan for t in tasks])
        pos = y0 + (i - (len(names) - 1) / 2) * h
        ax.barh(pos, acc_a, height=h, color=colors[m], alpha=0.85, label=m)
        err = np.vstack([acc_a - lo, hi - acc_a])
        ax.errorbar(acc_a, pos, xerr=np.where(np.isfinite(err), np.maximum(err, 0), 0), fmt="none",
                    ecolor="#333333", capsize=2, lw=0.9)
    chance = {r["task"]: r["chance"] for r in view.filter(pl.col("model") == "base").iter_rows(named=True)}
    for yi, t in zip(y0, tasks):
        if chance.get(t) is not None:
            ax.plot([chance[t]] * 2, [yi - 0.45, yi + 0.45], color="#555555", ls=":", lw=1.6,
                    label="chance (1 / number of choices)" if yi == 0 else None)
    ax.set_yticks(y0)
    ax.set_yticklabels(tasks, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"accuracy (fraction correct, {_pct(level)} Wilson interval)")
    ax.set_title("Accuracy per task", fontsize=10)
    ax.set_ylabel("task")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4, frameon=False)
    k = len(data.models)
    h2 = 0.8 / max(k, 1)
    for i, m in enumerate(data.models):
        d, lo, hi = [], [], []
        for t in tasks:
            d.append(_summary_value(data, m, t, "acc", "diff"))
            lo.append(_summary_value(data, m, t, "acc", "ci_low"))
            hi.append(_summary_value(data, m, t, "acc", "ci_high"))
        da = np.array([np.nan if v is None else v for v in d])
        la = np.array([np.nan if v is None else v for v in lo])
        ha = np.array([np.nan if v is None else v for v in hi])
        pos = y0 + (i - (k - 1) / 2) * h2
        err = np.vstack([da - la, ha - da])
        ax2.errorbar(da, pos, xerr=np.where(np.isfinite(err), np.maximum(err, 0), 0), fmt="o", color=colors[m],
                     capsize=3, ms=5, label=f"{m} − base")
    ax2.axvline(0, color="#888888", lw=1, ls="--")
    ax2.set_yticks(y0)
    ax2.set_yticklabels(tasks, fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xlabel(f"Δaccuracy, quantized − base ({_pct(level)} interval from the summary)")
    ax2.set_title("Accuracy change per task", fontsize=10)
    ax2.set_ylabel("task")
    ax2.grid(alpha=0.3, axis="x")
    ax2.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    fig.suptitle(f"Accuracy: base vs {', '.join(data.models)}", fontsize=11)
    fig.tight_layout()
    return [Figure("accuracy", fig, "Accuracy per task",
                   "Tasks with gold answers. Left: accuracy (lm-evaluation-harness acc) of each model per task "
                   "with Wilson intervals; dotted: the accuracy of guessing. Right: the paired difference with its "
                   "interval from the summary table (bootstrap; when no answer changed, the Wilson bound on the "
                   "share of changed answers).", "accuracy")]


def flip_table(data: AnalysisData) -> pl.DataFrame:
    """Per (model, task with gold answers): n, correct→incorrect, incorrect→correct, changed
    answers (counts from the summary's flip rates), the flip rate with its Wilson interval and
    McNemar's exact p of "accuracy unchanged" (unadjusted; the acc row's own p is its bootstrap p)."""
    s = data.summary
    rows = []
    for m in data.models:
        for t in gold_tasks(data):
            def get(metric: str, col: str, m: str = m, t: str = t) -> float | None:
                return _summary_value(data, m, t, metric, col)
            n = s.filter((pl.col("model") == m) & (pl.col("task") == t) & (pl.col("metric") == "flips"))
            if n.height == 0:
                continue
            nn = int(n["n"][0])
            p = get("flips", "p_mcnemar") if "p_mcnemar" in s.columns else get("flips", "p")
            rows.append({"model": m, "task": t, "n": nn,
                         "c2i": int(round((get("flips_c2i", "diff") or 0) * nn)),
                         "i2c": int(round((get("flips_i2c", "diff") or 0) * nn)),
                         "changed": int(round((get("changed_answer", "diff") or 0) * nn)),
                         "flip_rate": get("flips", "diff"),
                         "flip_low": get("flips", "ci_low"), "flip_high": get("flips", "ci_high"),
                         "p_mcnemar": p})
    return pl.DataFrame(rows)


def fig_flips(data: AnalysisData) -> list[Figure]:
    plt = _plt()
    tasks = gold_tasks(data)
    if not data.models or not tasks:
        return []
    level = _conf_level(data)
    flips = set(data.summary.filter(pl.col("metric") == "flips")["task"].to_list()) if data.summary.height else set()
    tasks = [t for t in tasks if t in flips]  # tasks with answers to flip (not generation)
    if not tasks:
        return []
    k = len(data.models)
    fig, axes = plt.subplots(1, k, figsize=(5.6 * k + 1.2, 0.5 * len(tasks) + 2.2), sharey=True, squeeze=False)
    y0 = np.arange(len(tasks))
    xmax = 0.0
    ft = {(r["model"], r["task"]): r for r in flip_table(data).iter_rows(named=True)}
    for ax, m in zip(axes[0], data.models):
        ends = np.zeros(len(tasks))
        for j, (metric, lab, col) in enumerate((("flips_c2i", "correct → incorrect", "#d62728"),
                                                ("flips_i2c", "incorrect → correct", "#2ca02c"))):
            v = np.array([_summary_value(data, m, t, metric, "diff") or 0.0 for t in tasks])
            lo = np.array([_summary_value(data, m, t, metric, "ci_low") or 0.0 for t in tasks])
            hi = np.array([_summary_value(data, m, t, metric, "ci_high") or 0.0 for t in tasks])
            pos = y0 + (j - 0.5) * 0.38
            ax.barh(pos, 100 * v, height=0.36, color=col, alpha=0.85, label=f"{lab} ({_pct(level)} Wilson interval)")
            ax.errorbar(100 * v, pos, xerr=100 * np.maximum(np.vstack([v - lo, hi - v]), 0), fmt="none",
                        ecolor="#333333", capsize=2.5, lw=1)
            ends = np.maximum(ends, 100 * hi)
            xmax = max(xmax, float(np.nanmax(100 * hi)) if hi.size else 0.0)
        for yi, t in enumerate(tasks):
            p = (ft.get((m, t)) or {}).get("p_mcnemar")
            if p is not None:
                ax.annotate(f"McNemar p {p:.2g}", (ends[yi], yi), xytext=(4, 0), textcoords="offset points",
                            ha="left", va="center", fontsize=6.5, color="#444444")
        ax.set_title(f"base → {m}", fontsize=10)
        ax.set_xlabel("examples whose correctness flips (% of the task)")
        ax.grid(alpha=0.3, axis="x")
    for ax in axes[0]:
        ax.set_xlim(0, max(5.0, xmax) * 1.55)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    axes[0][0].set_yticks(y0)
    axes[0][0].set_yticklabels(tasks, fontsize=8)
    axes[0][0].invert_yaxis()
    axes[0][0].set_ylabel("task")
    fig.suptitle(f"Answer flips per task with gold answers: base vs {', '.join(data.models)}", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return [Figure("flips", fig, "Answer flips per task",
                   "Share of examples whose correctness changes, by direction, with Wilson intervals; beside each "
                   "task, McNemar's exact p (unadjusted) of \"accuracy unchanged\" on the discordant pairs.",
                   "accuracy")]


# ---------------------------------------------------------------------------
# groups


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


def fig_bias(data: AnalysisData) -> list[Figure]:
    from qfair.report.bias import bias_figures  # the bias section lives in its own module

    return bias_figures(data)


def fig_families(data: AnalysisData) -> list[Figure]:
    from qfair.report.families import family_figures  # the across-languages section lives in its own module

    return family_figures(data)


def fig_generation(data: AnalysisData) -> list[Figure]:
    """Generation analyses: KL by position and identical-prefix survival (qfair.report.generation)."""
    from qfair.report.generation import generation_figures

    return generation_figures(data)


FIGURE_FUNCS: tuple[Callable[[AnalysisData], list[Figure]], ...] = (
    fig_reliability, fig_token_kl, fig_strata, fig_uncertainty_tests, fig_accuracy, fig_flips, fig_groups,
    fig_bias, fig_families, fig_generation)


def make_figures(data: AnalysisData, out_dir: str | Path, progress: bool = False) -> list[Figure]:
    """Draw every figure the data supports and save it as ``out_dir/<name>.png``."""
    from tqdm.auto import tqdm

    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs: list[Figure] = []
    for fn in tqdm(FIGURE_FUNCS, desc="qfair report", unit="figure", disable=not progress, dynamic_ncols=True):
        for f in fn(data):
            f.path = out / f"{f.name}.png"
            f.fig.savefig(f.path, dpi=DPI)
            plt.close(f.fig)
            figs.append(f)
    return figs
