"""The report's view across languages: per task family (XStoryCloze languages,
CrowS-Pairs en/fr), each member's headline change and mean KL with their
intervals (from the summary's own per-task rows), and the family's spread with
its permutation test (the summary's ``family`` rows, qfair.analyze.families)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from qfair.report.common import Figure, Section, _img, _plt, _safe, model_colors, table_html
from qfair.report.data import AnalysisData

__all__ = ["family_figures", "family_section"]

_PREFIXES = {"xstorycloze": "xstorycloze_", "crows_pairs": "crows_pairs_"}


def _rows(data: AnalysisData) -> pl.DataFrame:
    s = data.summary
    if s.height == 0 or "kind" not in s.columns:
        return pl.DataFrame()
    return s.filter(pl.col("kind") == "family")


def _f(v: Any) -> float:
    return float("nan") if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def family_figures(data: AnalysisData) -> list[Figure]:
    """One figure per family: per member (language), each model's change of the headline
    and its mean KL(base ‖ quantized), with the summary's intervals."""
    fam = _rows(data)
    if fam.height == 0:
        return []
    plt = _plt()
    s = data.summary
    models = [m for m in data.models if m in set(fam["model"])] or fam["model"].unique(maintain_order=True).to_list()
    colors = model_colors(models)
    out = []
    for family in fam["task"].unique(maintain_order=True).to_list():
        f = fam.filter(pl.col("task") == family)
        prefix = _PREFIXES.get(family, family + "_")
        members = sorted({t for t in s["task"].to_list() if t and t.startswith(prefix)})
        panels = [(m.removesuffix("_change_spread"), "example", m) for m in f["metric"].to_list()
                  if m.endswith("_change_spread")]
        if "mean_kl_spread" in set(f["metric"]):
            panels.append(("kl_pq", "token", "mean_kl_spread"))
        if not panels or len(members) < 2:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.0, 0.3 * len(members) * len(models) + 2.2),
                                 squeeze=False, sharey=True)
        y0 = np.arange(len(members))
        h = 0.8 / len(models)
        for ax, (metric, kind, fam_metric) in zip(axes[0], panels):
            for i, model in enumerate(models):
                sel = s.filter((pl.col("model") == model) & (pl.col("metric") == metric) & (pl.col("kind") == kind))
                by = {r["task"]: r for r in sel.iter_rows(named=True)}
                x = np.array([_f(by[t]["diff"]) if t in by else np.nan for t in members])
                lo = np.array([_f(by[t]["ci_low"]) if t in by else np.nan for t in members])
                hi = np.array([_f(by[t]["ci_high"]) if t in by else np.nan for t in members])
                err = np.where(np.isfinite(np.vstack([x - lo, hi - x])), np.maximum(np.vstack([x - lo, hi - x]), 0), 0)
                row = f.filter((pl.col("model") == model) & (pl.col("metric") == fam_metric))
                tag = ""
                if row.height:
                    r = row.row(0, named=True)
                    tag = f" (spread {_f(r['diff']):.3g}, p = {_f(r['p']):.2g})"
                pos = y0 - 0.4 + h * (i + 0.5)
                ax.barh(pos, np.nan_to_num(x), height=h * 0.9, xerr=err, color=colors[model], alpha=0.85,
                        error_kw={"elinewidth": 1, "capsize": 2}, label=model + tag)
                ax.plot(x, pos, "o", ms=2.5, color=colors[model])
            if kind == "example":
                ax.axvline(0.0, color="#888888", lw=1, ls="--")
                ax.set_xlabel(f"change of {metric} (quantized − base)", fontsize=8)
            else:
                ax.set_xlabel("mean KL(base ‖ quantized) per token, nats", fontsize=8)
            ax.set_title(fam_metric, fontsize=9)
            ax.grid(alpha=0.3, axis="x")
            ax.legend(fontsize=7, loc="best")
        axes[0][0].set_yticks(y0)
        axes[0][0].set_yticklabels([t.removeprefix(prefix) for t in members], fontsize=8)
        axes[0][0].invert_yaxis()
        axes[0][0].set_ylabel("member (language)")
        fig.suptitle(f"{family}: change per language, base vs {', '.join(models)}", fontsize=10)
        fig.tight_layout()
        out.append(Figure(f"family_{_safe(family)}", fig, f"Across languages: {family}",
                          "Each member's change of the headline (and its mean KL) with the summary's bootstrap "
                          "interval; the legend gives the family's spread (max − min over members) and the p of the "
                          "permutation test that the change is the same in every member.", "families"))
    return out


def family_section(data: AnalysisData, figs: list[Figure], table_html: Any, img: Any) -> str:
    """The HTML of the across-languages section ('' when no family has two members)."""
    fam = _rows(data)
    if fam.height == 0:
        return ""
    body = "".join(img(f) for f in figs if f.section == "families")
    body += table_html(fam, ["model", "task", "metric", "n", "diff", "ci_low", "ci_high", "p", "p_holm", "test"],
                       sig_col="p_holm")
    body += ("<p class='meta'>diff = spread (max − min over the family's members) of each member's change of its "
             "headline, or of its mean KL; interval: percentile bootstrap (each member resampled on its own task's "
             "draw); p: permutation test of heterogeneity (member labels permuted over the pooled examples), "
             "p_holm over the summary table.</p>")
    return body


def _section(data: AnalysisData, figs: list[Figure]) -> str:
    return family_section(data, figs, table_html, _img) or (
        "<p class='meta'>No task family with two or more members in this analysis (xstorycloze_*, "
        "crows_pairs_*).</p>")


SECTION = Section("families", "Across languages: task families", "task families (xstorycloze_*, crows_pairs_*)",
                  ("summary",), _section, (family_figures,))
