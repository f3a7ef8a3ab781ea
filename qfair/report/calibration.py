"""The report's calibration section: reliability diagrams per task with gold
answers, and the calibration rows of the summary (ECE, MCE, RMS-CE, debiased
L2, the study's ACE / MCE)."""
from __future__ import annotations

import numpy as np
import polars as pl

from qfair.report.common import Figure, Section, _figs, _plt, _safe, model_colors, table_html
from qfair.report.data import AnalysisData
from qfair.report.lookup import _conf_level, _pct, _summary_value, gold_tasks

__all__ = ["fig_reliability", "calibration_section", "SECTION"]


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


CAL_COLUMNS = ["model", "task", "metric", "n", "base", "base_low", "base_high", "quant", "quant_low", "quant_high",
               "diff", "ci_low", "ci_high", "p", "p_holm"]


def _calibration_rows(data: AnalysisData) -> pl.DataFrame:
    if "kind" not in data.summary.columns:
        return pl.DataFrame()
    return data.summary.filter(pl.col("kind").is_in(["calibration", "study"]))


def calibration_section(data: AnalysisData, figs: list[Figure]) -> str:
    return (_figs(figs, "calibration", grid=True) +
            "<details><summary>Calibration summary rows (ECE, MCE, RMS-CE, debiased L2, and the "
            "study's ACE / MCE estimators)</summary>" +
            table_html(_calibration_rows(data), CAL_COLUMNS, sig_col="p_holm") +
            "<p class='meta'>base_low … quant_high: each model's own value with its percentile "
            "bootstrap interval; conf_pos / conf_neg: mean confidence on correct / incorrect answers; "
            "ace_study / mce_study: the reference study's estimators as published (docs/metrics.md)."
            "</p></details>")


def _empty(data: AnalysisData, figs: list[Figure], html: str) -> bool:
    return _no_figures(figs, "calibration") and not _calibration_rows(data).height


def _no_figures(figs: list[Figure], section: str) -> bool:
    return not any(f.section == section for f in figs)


SECTION = Section("calibration", "Calibration: reliability diagrams", "task kinds with gold answers",
                  ("summary", "calibration"), calibration_section, (fig_reliability,), _empty)
