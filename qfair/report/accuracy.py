"""The report's accuracy section: accuracy per model and task with Wilson
intervals, and the flips between correct and incorrect answers."""
from __future__ import annotations

import numpy as np
import polars as pl

from qfair.report.common import Figure, Section, _figs, _plt, model_colors, table_html
from qfair.report.data import AnalysisData
from qfair.report.lookup import _conf_level, _pct, _summary_value, gold_tasks

__all__ = ["accuracy_view", "flip_table", "fig_accuracy", "fig_flips", "accuracy_section", "SECTION"]


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


def accuracy_section(data: AnalysisData, figs: list[Figure]) -> str:
    ft = flip_table(data)
    av = accuracy_view(data)
    return (_figs(figs, "accuracy") +
            ("<details><summary>Accuracy per model and task (Wilson intervals)</summary>" +
             table_html(av) + "</details>" if av.height else "") +
            "<h3>Flip table</h3>" +
            table_html(ft) +
            "<p class='meta'>Tasks with gold answers. c2i = correct → incorrect, i2c = incorrect → "
            "correct, changed = the predicted answer changed; flip_low/high: Wilson interval of "
            "(c2i + i2c) / n (a rate, 0 for identical models: no test); p_mcnemar: exact two-sided "
            "McNemar test of c2i vs i2c (accuracy unchanged), unadjusted.</p>")


def _empty(data: AnalysisData, figs: list[Figure], html: str) -> bool:
    return _no_figures(figs, "accuracy") and accuracy_view(data).height == 0 and flip_table(data).height == 0


def _no_figures(figs: list[Figure], section: str) -> bool:
    return not any(f.section == section for f in figs)


SECTION = Section("accuracy", "Accuracy and flips", "task kinds with gold answers", ("summary", "examples"),
                  accuracy_section, (fig_accuracy, fig_flips), _empty)
