"""The report's first section: one line per model, and the table of each
task's headline metrics with their intervals, tests and readings."""
from __future__ import annotations

from typing import Any

import polars as pl

from qfair.report.common import Figure, Section, _e, table_html
from qfair.report.data import AnalysisData
from qfair.report.text import headline_rows, model_headlines

__all__ = ["headline_section", "SECTION"]


def headline_section(data: AnalysisData, figs: list[Figure]) -> str:
    level = float(data.settings.get("confidence") or 0.95)
    rows = headline_rows(data.summary, data.models, alpha=1 - level)
    parts = ["<ul>"] + [f"<li>{_e(h)}</li>" for h in model_headlines(data.summary, data.examples, data.tokens,
                                                                     data.models)] + ["</ul>"]
    if rows:
        def f3(v: Any, sign: bool = False) -> str:
            if v is None:
                return ""
            return (f"{v:+.3f}" if sign else f"{v:.3f}") if abs(v) < 10 else (f"{v:+.2f}" if sign else f"{v:.2f}")

        view = [{"model": r["model"] if r["first"] else "", "task": r["task"] if r["first"] else "",
                 "n": r["n"] if r["first"] else None, "metric": r["metric"],
                 "base → quant": f"{f3(r['base'])} → {f3(r['quant'])}",
                 "Δ [CI]": f"{f3(r['diff'], True)} [{f3(r['ci_low'], True)}, {f3(r['ci_high'], True)}]",
                 "p": r["p"], "p_adj": r["p_adj"], "reading": r["reading"],
                 "ECE base → quant": "" if r["ece_base"] is None else f"{f3(r['ece_base'])} → {f3(r['ece_quant'])}",
                 "KL (nats)": None if r["kl"] is None else f"{r['kl']:.4f}",
                 "flips c→i / i→c": "" if r["c2i"] is None else f"{r['c2i']} / {r['i2c']}",
                 "McNemar p": r["p_mcnemar"]} for r in rows]
        parts.append(table_html(pl.DataFrame(view, infer_schema_length=None), sig_col="p_adj"))
        parts.append(f"<p class='meta'>Each task headlines its own metric(s): accuracy for a multiple-choice task, "
                     "mc2 for TruthfulQA MC2, the share of stereotype-consistent pairs (neutral: 50 %) and the "
                     "likelihood difference for CrowS-Pairs. Δ = quantized − base with its paired bootstrap "
                     f"interval ({_e(data.settings.get('bootstrap'))} resamples, {100 * level:g}%); p inverts "
                     "that interval, so the interval excludes 0 exactly when p &lt; "
                     f"{1 - level:g}. p_adj: each task's first metric is in the primary family, Holm-adjusted "
                     "over the primary rows of every task and model; the other rows are secondary, "
                     "Benjamini–Hochberg-adjusted within their metric class (the summary's family column). "
                     "reading: better / worse by the metric's direction (for CrowS-Pairs: toward / away from "
                     "50 %), “secondary” for a secondary row that passes its adjustment, n.s. when the interval "
                     "includes 0, “raw” when only the unadjusted p passes. "
                     "ECE, flips and McNemar's exact p (unadjusted) only for tasks with gold answers. "
                     "Bold rows: p_adj &lt; 0.05.</p>")
    return "".join(parts)


SECTION = Section("headline", "Headline numbers", "every analysis", ("summary", "examples", "tokens"),
                  headline_section)
