"""The report's summary section: every row of the analysis's summary table, folded."""
from __future__ import annotations

from qfair.report.common import Figure, Section, table_html
from qfair.report.data import AnalysisData

__all__ = ["summary_section", "SECTION"]


def summary_section(data: AnalysisData, figs: list[Figure]) -> str:
    return ("<p class='meta'>Every row of the analysis: diff = quantized − base (or the comparison "
            "metric's value), its interval (ci_method) and p, the smallest level at which that interval "
            "excludes null; rows without p describe a quantity with no test (divergences, agreement and "
            "flip rates). p_perm: permutation test, p_ttest: paired t-test (--ttest), p_mcnemar: "
            "McNemar's exact test; p_holm: Holm, p_bh: Benjamini–Hochberg, each within the row's family "
            "(column family: primary = each task's first headline metric per model, adjusted together; "
            "secondary = every other tested row, adjusted within its metric class, the kind column); a "
            "primary row reads by p_holm, a secondary one by p_bh.</p>" +
            "<details><summary>Show the full summary table "
            f"({data.summary.height} rows)</summary>" +
            table_html(data.summary, ["model", "task", "metric", "kind", "n", "base", "quant", "diff",
                                      "ci_low", "ci_high", "ci_method", "null", "test", "p", "p_perm",
                                      "p_ttest", "p_mcnemar", "family", "p_holm", "p_bh"],
                       sig_col="p_holm") + "</details>")


SECTION = Section("summary", "Summary table", "every analysis", ("summary",), summary_section)
