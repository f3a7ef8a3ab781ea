"""The report's figures, drawn with matplotlib's Agg backend from the analysis tables.

Each ``fig_*`` function returns a list of :class:`Figure` (a file name, a
matplotlib figure, a title and a caption); ``make_figures`` draws them all and
saves PNGs. Every figure labels its axes with units, says in its title what is
compared, and has a legend. Intervals drawn here come from the analysis tables
(paired bootstrap CIs, Wilson intervals) or, for views the tables do not hold
(accuracy levels, Δconfidence pooled over tasks), from :mod:`qfair.stats` with
the analysis' own seed, resamples and confidence level.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from qfair.report.data import AnalysisData

__all__ = ["Figure", "make_figures", "KL_PERCENTILES", "kl_percentiles", "FIGURE_FUNCS", "model_colors",
           "accuracy_view", "strata_view", "flip_table", "group_view"]

DPI = 110
BASE_COLOR = "#222222"
# llama.cpp's KL summary: max, 99.9, 99, 95, 90, median, 10, 5, 1, 0.1 percentiles, min
KL_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.1)
KL_FLOOR = 1e-9  # zero KL values are drawn at this floor on the log axis
CDF_POINTS = 20_001  # larger token tables are drawn through this many quantiles
SCATTER_POINTS = 4_000  # at most this many examples per model in the strata scatter


@dataclass
class Figure:
    name: str          # file stem, e.g. "reliability_piqa"
    fig: Any           # matplotlib.figure.Figure (closed after saving)
    title: str
    caption: str
    section: str
    path: Path | None = None


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def model_colors(models: list[str]) -> dict[str, str]:
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
    out = {"base": BASE_COLOR}
    for i, m in enumerate(models):
        out[m] = palette[i % len(palette)]
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "x"


def _summary_value(data: AnalysisData, model: str, task: str, metric: str, col: str) -> float | None:
    s = data.summary
    r = s.filter((pl.col("model") == model) & (pl.col("task") == task) & (pl.col("metric") == metric))
    if r.height == 0 or col not in r.columns:
        return None
    v = r[col][0]
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _conf_level(data: AnalysisData) -> float:
    return float(data.settings.get("confidence") or 0.95)


def _pct(level: float) -> str:
    return f"{100 * level:g}%"


# ---------------------------------------------------------------------------
# reliability diagrams


def fig_reliability(data: AnalysisData) -> list[Figure]:
    plt = _plt()
    cal = data.calibration
    if cal.height == 0:
        return []
    binning = "width"
    nbins = int(data.settings.get("bins") or cal.filter(pl.col("binning") == binning)["bin"].max() + 1)
    colors = model_colors(data.models)
    out = []
    for task in data.tasks:
        sub = cal.filter((pl.col("task") == task) & (pl.col("binning") == binning))
        if sub.height == 0:
            continue
        series = [("base", sub.filter(pl.col("role") == "base"))]
        series += [(m, sub.filter((pl.col("role") == "quant") & (pl.col("model") == m))) for m in data.models]
        series = [(m, df.sort("bin")) for m, df in series if df.height]
        n_ex = int(series[0][1]["n"].sum())
        fig, (ax, axc) = plt.subplots(2, 1, figsize=(6.4, 6.2), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.2], "hspace": 0.08})
        ax.plot([0, 1], [0, 1], ls="--", color="#888888", lw=1, label="perfect calibration")
        width = 1.0 / nbins
        k = len(series)
        for i, (m, df) in enumerate(series):
            ok = df.filter(pl.col("n") > 0)
            if m == "base":
                ece = _summary_value(data, data.models[0], task, "ece", "base") if data.models else None
            else:
                ece = _summary_value(data, m, task, "ece", "quant")
            lab = f"{m} (ECE {ece:.3f})" if ece is not None else m
            ax.plot(ok["conf_mean"].to_numpy(), ok["acc_mean"].to_numpy(), marker="o", ms=5, lw=1.6,
                    color=colors.get(m), label=lab, alpha=0.9)
            lo = df["lo"].to_numpy()
            axc.bar(lo + width * (i + 0.5) / k, df["n"].to_numpy(), width=width / k, color=colors.get(m),
                    alpha=0.85, label=m, align="center")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("accuracy in bin (fraction correct)")
        ax.set_title(f"{task}: reliability, base vs {', '.join(data.models)}\n"
                     f"({nbins} equal-width confidence bins, n = {n_ex} examples)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8, frameon=True)
        axc.set_xlabel("confidence (probability of the predicted choice)")
        axc.set_ylabel("examples per bin")
        axc.legend(loc="upper left", fontsize=7, ncol=max(1, k), frameon=False)
        axc.grid(alpha=0.3, axis="y")
        fig.subplots_adjust(left=0.12, right=0.97, top=0.9, bottom=0.09)
        out.append(Figure(f"reliability_{_safe(task)}", fig, f"Reliability on {task}",
                          "Mean accuracy against mean confidence in each non-empty equal-width bin "
                          "(top-label: the probability of the chosen answer); the diagonal is perfect calibration. "
                          "Lower panel: how many examples fall in each bin, per model. ECE from the summary table.",
                          "calibration"))
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
                label=f"{m}: mean {st['mean']:.4f} nats, median {st['p50']:.4f} (n = {kl.size:,} tokens)")
        px = [max(st[f"p{p:g}"], KL_FLOOR) for p in KL_PERCENTILES] + [max(st["max"], KL_FLOOR)]
        py = [p / 100 for p in KL_PERCENTILES] + [1.0]
        ax.plot(px, py, ls="none", marker="D", ms=5, mfc="white", mec=colors[m], mew=1.4,
                label=None if pct_label_done else "percentiles 0.1, 1, 5, 10, 50, 90, 95, 99, 99.9 and max")
        pct_label_done = True
        for p in (50.0, 99.0):
            v = st[f"p{p:g}"]
            ax.annotate(f"{'median' if p == 50 else 'P99'} {v:.3g}", (max(v, KL_FLOOR), p / 100),
                        textcoords="offset points", xytext=(6, -12 if p == 50 else -12), fontsize=7,
                        color=colors[m])
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


def _strata_edges(conf: np.ndarray, k: int) -> np.ndarray:
    k = max(1, min(k, conf.size))
    return np.quantile(conf, np.linspace(0, 1, k + 1)[1:-1]) if k > 1 else np.array([])


def strata_view(data: AnalysisData) -> pl.DataFrame:
    """Examples pooled over tasks, binned by base confidence into equal-count
    strata: per (model, stratum) n, mean base confidence, mean Δconfidence with
    a bootstrap CI, flip rate with a Wilson interval."""
    from qfair import stats

    ex = data.examples
    if ex.height == 0:
        return pl.DataFrame()
    k = int(data.settings.get("n_strata") or 5)
    level = _conf_level(data)
    b = int(min(int(data.settings.get("bootstrap") or 10_000), 10_000))
    seed = int(data.settings.get("seed") or 0)
    rows = []
    for m in data.models:
        e = ex.filter(pl.col("model") == m)
        bc = e["base_conf"].cast(pl.Float64).to_numpy()
        dc = (e["quant_conf"].cast(pl.Float64) - e["base_conf"].cast(pl.Float64)).to_numpy()
        fl = (e["base_correct"].cast(pl.Float64) != e["quant_correct"].cast(pl.Float64)).cast(pl.Int64).to_numpy()
        ok = np.isfinite(bc) & np.isfinite(dc)
        bc, dc, fl = bc[ok], dc[ok], fl[ok]
        if bc.size == 0:
            continue
        edges = _strata_edges(bc, k)
        s = np.searchsorted(edges, bc, side="left")
        for j in range(len(edges) + 1):
            mask = s == j
            if not mask.any():
                continue
            r = stats.paired_bootstrap([stats.MeanDiff(dc[mask])], resamples=b, seed=seed, confidence=level)[0]
            n = int(mask.sum())
            kf = int(fl[mask].sum())
            lo, hi = stats.wilson([kf], [n], level)
            rows.append({"model": m, "stratum": j, "n": n, "conf_lo": float(bc[mask].min()),
                         "conf_hi": float(bc[mask].max()), "base_conf": float(bc[mask].mean()),
                         "delta_conf": float(dc[mask].mean()), "delta_conf_low": r.pct_lo,
                         "delta_conf_high": r.pct_hi, "flip_rate": kf / n, "flip_low": float(lo[0]),
                         "flip_high": float(hi[0])})
    return pl.DataFrame(rows)


def fig_strata(data: AnalysisData) -> list[Figure]:
    plt = _plt()
    view = strata_view(data)
    if view.height == 0:
        return []
    colors = model_colors(data.models)
    level = _conf_level(data)
    ex = data.examples
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    k = len(data.models)
    for i, m in enumerate(data.models):
        v = view.filter(pl.col("model") == m).sort("stratum")
        if v.height == 0:
            continue
        e = ex.filter(pl.col("model") == m)
        bc = e["base_conf"].cast(pl.Float64).to_numpy()
        dc = (e["quant_conf"].cast(pl.Float64) - e["base_conf"].cast(pl.Float64)).to_numpy()
        if bc.size > SCATTER_POINTS:  # a fixed random subset keeps the PNG readable
            keep = np.random.default_rng(0).choice(bc.size, SCATTER_POINTS, replace=False)
            bc, dc = bc[keep], dc[keep]
        ax.scatter(bc, dc, s=9, alpha=0.25, color=colors[m], lw=0, label=f"{m}: one example")
        x = v["base_conf"].to_numpy()
        y = v["delta_conf"].to_numpy()
        yerr = np.vstack([y - v["delta_conf_low"].to_numpy(), v["delta_conf_high"].to_numpy() - y])
        ax.errorbar(x, y, yerr=np.maximum(yerr, 0), color=colors[m], marker="o", ms=6, lw=1.8, capsize=3,
                    label=f"{m}: stratum mean, {_pct(level)} bootstrap CI")
        pos = np.arange(v.height) + (i - (k - 1) / 2) * 0.8 / max(k, 1)
        fr = v["flip_rate"].to_numpy()
        ferr = np.vstack([fr - v["flip_low"].to_numpy(), v["flip_high"].to_numpy() - fr])
        ax2.bar(pos, 100 * fr, width=0.8 / max(k, 1), color=colors[m], alpha=0.8,
                label=f"{m} ({_pct(level)} Wilson interval)")
        ax2.errorbar(pos, 100 * fr, yerr=100 * np.maximum(ferr, 0), fmt="none", ecolor="#333333", capsize=3, lw=1)
    ax.axhline(0, color="#888888", lw=1, ls="--")
    ax.set_xlabel("base model confidence (probability of its chosen answer)")
    ax.set_ylabel("Δconfidence, quantized − base (probability)")
    ax.set_title("Confidence change against base confidence\n(all tasks pooled, equal-count strata)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    first = view.filter(pl.col("model") == data.models[0]).sort("stratum") if data.models else view
    ax2.set_xticks(np.arange(first.height))
    ax2.set_xticklabels([f"{a:.3f}–{b:.3f}\n(n={n})" for a, b, n in
                         zip(first["conf_lo"], first["conf_hi"], first["n"])], fontsize=7)
    ax2.set_xlabel("base confidence stratum (range, examples)")
    ax2.set_ylabel("answers flipped (% of examples)")
    ax2.set_title("Flip rate (correct↔incorrect) per base-confidence stratum", fontsize=10)
    ax2.grid(alpha=0.3, axis="y")
    ax2.legend(fontsize=7, loc="best")
    fig.suptitle(f"Uncertainty strata: base vs {', '.join(data.models)}", fontsize=11)
    fig.tight_layout()
    return [Figure("confidence_strata", fig, "Uncertainty strata",
                   "Left: each example's change in confidence (quantized − base) against the base model's "
                   "confidence; large points are stratum means with percentile bootstrap intervals. Right: the "
                   "share of examples whose correctness flips, per stratum. Strata have equal counts "
                   "(quantiles of base confidence over all tasks).", "strata")]


# ---------------------------------------------------------------------------
# accuracy and flips


def accuracy_view(data: AnalysisData) -> pl.DataFrame:
    """Per (model incl. "base", task): n, correct count, accuracy and its Wilson interval."""
    from qfair import stats

    ex = data.examples
    if ex.height == 0 or not data.models:
        return pl.DataFrame()
    level = _conf_level(data)
    rows = []
    for m in ["base"] + data.models:
        src = data.models[0] if m == "base" else m
        col = "base_correct" if m == "base" else "quant_correct"
        for t in data.tasks:
            c = ex.filter((pl.col("model") == src) & (pl.col("task") == t))[col].cast(pl.Float64).to_numpy()
            c = c[np.isfinite(c)]
            n, k = int(c.size), int(c.sum())
            if n == 0:
                continue
            lo, hi = stats.wilson([k], [n], level)
            rows.append({"model": m, "task": t, "n": n, "correct": k, "acc": k / n, "acc_low": float(lo[0]),
                         "acc_high": float(hi[0])})
    return pl.DataFrame(rows)


def fig_accuracy(data: AnalysisData) -> list[Figure]:
    plt = _plt()
    tasks = data.tasks
    view = accuracy_view(data)
    if not tasks or view.height == 0:
        return []
    colors = model_colors(data.models)
    level = _conf_level(data)
    names = ["base"] + data.models
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 0.2 * len(tasks) * len(names) + 1.9),
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
    ax.set_yticks(y0)
    ax.set_yticklabels(tasks, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"accuracy (fraction correct, {_pct(level)} Wilson interval)")
    ax.set_title("Accuracy per task", fontsize=10)
    ax.set_ylabel("task")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="lower right")
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
    ax2.set_xlabel(f"Δaccuracy, quantized − base (paired bootstrap {_pct(level)} CI)")
    ax2.set_title("Accuracy change per task", fontsize=10)
    ax2.set_ylabel("task")
    ax2.grid(alpha=0.3, axis="x")
    ax2.legend(fontsize=8, loc="best")
    fig.suptitle(f"Accuracy: base vs {', '.join(data.models)}", fontsize=11)
    fig.tight_layout()
    return [Figure("accuracy", fig, "Accuracy per task",
                   "Left: accuracy (lm-evaluation-harness acc) of each model per task with Wilson intervals. "
                   "Right: the paired difference with its bootstrap interval from the summary table "
                   "(BCa where defined, else percentile).", "accuracy")]


def flip_table(data: AnalysisData) -> pl.DataFrame:
    """Per (model, task): n, correct→incorrect, incorrect→correct, changed answers
    (counts from the summary's flip rates) and McNemar's exact p (raw, Holm, BH)."""
    s = data.summary
    rows = []
    for m in data.models:
        for t in data.tasks:
            def get(metric: str, col: str, m: str = m, t: str = t) -> float | None:
                return _summary_value(data, m, t, metric, col)
            n = s.filter((pl.col("model") == m) & (pl.col("task") == t) & (pl.col("metric") == "flips"))
            if n.height == 0:
                continue
            nn = int(n["n"][0])
            rows.append({"model": m, "task": t, "n": nn,
                         "c2i": int(round((get("flips_c2i", "diff") or 0) * nn)),
                         "i2c": int(round((get("flips_i2c", "diff") or 0) * nn)),
                         "changed": int(round((get("changed_answer", "diff") or 0) * nn)),
                         "flip_rate": get("flips", "diff"),
                         "flip_low": get("flips", "ci_low"), "flip_high": get("flips", "ci_high"),
                         "p_mcnemar": get("flips", "p"), "p_holm": get("flips", "p_holm"),
                         "p_bh": get("flips", "p_bh")})
    return pl.DataFrame(rows)


def fig_flips(data: AnalysisData) -> list[Figure]:
    plt = _plt()
    if not data.models or not data.tasks:
        return []
    level = _conf_level(data)
    flips = set(data.summary.filter(pl.col("metric") == "flips")["task"].to_list()) if data.summary.height else set()
    tasks = [t for t in data.tasks if t in flips]  # tasks with answers to flip (not generation)
    if not tasks:
        return []
    k = len(data.models)
    fig, axes = plt.subplots(1, k, figsize=(5.4 * k + 1.2, 0.5 * len(tasks) + 2.2), sharey=True, squeeze=False)
    y0 = np.arange(len(tasks))
    xmax = 0.0
    for ax, m in zip(axes[0], data.models):
        for j, (metric, lab, col) in enumerate((("flips_c2i", "correct → incorrect", "#d62728"),
                                                ("flips_i2c", "incorrect → correct", "#2ca02c"))):
            v = np.array([_summary_value(data, m, t, metric, "diff") or 0.0 for t in tasks])
            lo = np.array([_summary_value(data, m, t, metric, "ci_low") or 0.0 for t in tasks])
            hi = np.array([_summary_value(data, m, t, metric, "ci_high") or 0.0 for t in tasks])
            pos = y0 + (j - 0.5) * 0.38
            ax.barh(pos, 100 * v, height=0.36, color=col, alpha=0.85, label=f"{lab} ({_pct(level)} Wilson interval)")
            ax.errorbar(100 * v, pos, xerr=100 * np.maximum(np.vstack([v - lo, hi - v]), 0), fmt="none",
                        ecolor="#333333", capsize=2.5, lw=1)
            xmax = max(xmax, float(np.nanmax(100 * hi)) if hi.size else 0.0)
        for yi, t in enumerate(tasks):
            p = _summary_value(data, m, t, "flips", "p_holm")
            if p is not None:
                ax.annotate(f"p_holm {p:.2g}", (1.0, yi), xycoords=("axes fraction", "data"), xytext=(-3, 0),
                            textcoords="offset points", ha="right", va="center", fontsize=7, color="#444444")
        ax.set_title(f"base → {m}", fontsize=10)
        ax.set_xlabel("examples whose correctness flips (% of the task)")
        ax.grid(alpha=0.3, axis="x")
    for ax in axes[0]:
        ax.set_xlim(0, max(5.0, xmax) * 1.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    axes[0][0].set_yticks(y0)
    axes[0][0].set_yticklabels(tasks, fontsize=8)
    axes[0][0].invert_yaxis()
    axes[0][0].set_ylabel("task")
    fig.suptitle(f"Answer flips per task: base vs {', '.join(data.models)} "
                 "(right: McNemar exact p, Holm-adjusted)", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return [Figure("flips", fig, "Answer flips per task",
                   "Share of examples whose correctness changes, by direction, with Wilson intervals; "
                   "McNemar's exact test on the discordant pairs, Holm-adjusted over the summary table.",
                   "accuracy")]


# ---------------------------------------------------------------------------
# groups


def _group_metric(kind: str | None, task: str) -> str:
    return "pct_stereotype" if (kind == "crows_pairs" or task.startswith("crows_pairs")) else "acc"


_METRIC_AXIS = {
    "pct_stereotype": "Δ share of pairs scored stereotype-consistent (quantized − base)",
    "acc": "Δaccuracy (quantized − base, fraction)",
}


def group_view(data: AnalysisData) -> pl.DataFrame:
    """The group rows the report shows: per task with two or more groups, the
    task's headline metric (pct_stereotype for CrowS-Pairs, else acc), sorted by
    effect (largest absolute difference first, averaged over models)."""
    g = data.groups
    if g.height == 0:
        return pl.DataFrame()
    parts = []
    for t in g["task"].unique(maintain_order=True).to_list():
        gt = g.filter(pl.col("task") == t)
        if gt["group"].n_unique() < 2:
            continue
        kind = gt["task_kind"][0] if "task_kind" in gt.columns else None
        metric = _group_metric(kind, t)
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
        fig, ax = plt.subplots(figsize=(7.6, 0.45 * len(groups) * max(1, 0.6 * k) + 2.0))
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
                        label=f"{m} − base ({_pct(level)} bootstrap CI)")
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
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        out.append(Figure(f"groups_{_safe(t)}", fig, f"Per-group differences on {t}",
                          f"Difference in {metric} between the quantized and the base model within each group, "
                          "with paired bootstrap intervals from the groups table, sorted by the size of the effect; "
                          "dotted lines mark the whole task's difference.", "groups"))
    return out


def fig_generation(data: AnalysisData) -> list[Figure]:
    """Generation analyses: KL by position and identical-prefix survival (qfair.report.generation)."""
    from qfair.report.generation import generation_figures

    return generation_figures(data)


FIGURE_FUNCS: tuple[Callable[[AnalysisData], list[Figure]], ...] = (
    fig_reliability, fig_token_kl, fig_strata, fig_accuracy, fig_flips, fig_groups, fig_generation)


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
