"""Writing a Comparison: Parquet, CSV, Markdown (every table) and LaTeX (summary)."""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

__all__ = ["write_tables", "to_markdown", "to_latex", "format_summary", "FORMATS"]

FORMATS = ("parquet", "csv", "md", "latex")
# Markdown/LaTeX show these summary columns (the files in parquet/csv hold all)
SUMMARY_VIEW = ("model", "task", "metric", "n", "base", "quant", "diff", "ci_low", "ci_high", "p", "family", "p_holm",
                "p_bh")


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return "[" + " ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v == 0:
            return "0"
        a = abs(v)
        if a < 1e-3 or a >= 1e5:
            return f"{v:.3g}"
        return f"{v:.4f}".rstrip("0").rstrip(".") if a < 1 else f"{v:.4g}"
    return str(v)


def _fmt_p(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return "<1e-4" if v < 1e-4 else f"{v:.4f}"


def to_markdown(df: pl.DataFrame, columns: Sequence[str] | None = None, max_rows: int | None = None) -> str:
    cols = [c for c in (columns or df.columns) if c in df.columns]
    if not cols:
        return "(empty)\n"
    head = "| " + " | ".join(cols) + " |"
    sep = "| " + " | ".join("---:" if df.schema[c].is_numeric() else "---" for c in cols) + " |"
    lines = [head, sep]
    view = df.select(cols) if max_rows is None else df.select(cols).head(max_rows)
    for row in view.iter_rows():
        cells = [(_fmt_p(v) if c.startswith("p") and c != "pred" and isinstance(v, float) else _fmt(v))
                 for c, v in zip(cols, row)]
        # a cell is one line: generated text may hold newlines
        lines.append("| " + " | ".join(x.replace("|", "\\|").replace("\r", "\\r").replace("\n", "\\n")
                                       for x in cells) + " |")
    if max_rows is not None and df.height > max_rows:
        lines.append(f"\n({df.height - max_rows} more rows in the Parquet/CSV files)")
    return "\n".join(lines) + "\n"


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        s = s.replace(a, b)
    return s


def to_latex(summary: pl.DataFrame) -> str:
    """A booktabs table of the summary: diff [CI] and Holm-adjusted p per row."""
    cols = ["model", "task", "metric", "base", "quant", "diff", "95\\% CI", "$p$", "$p_{\\mathrm{Holm}}$"]
    out = [r"\begin{tabular}{lllrrrcrr}", r"\toprule", " & ".join(cols) + r" \\", r"\midrule"]
    for r in summary.iter_rows(named=True):
        ci = "" if r["ci_low"] is None else f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        cells = [_tex(str(r["model"])), _tex(str(r["task"])), _tex(str(r["metric"])), _fmt(r["base"]),
                 _fmt(r["quant"]), _fmt(r["diff"]), ci, _fmt_p(r["p"]), _fmt_p(r.get("p_holm"))]
        out.append(" & ".join(_tex(c) if c.startswith("<") else c for c in cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def format_summary(summary: pl.DataFrame, max_rows: int = 200) -> str:
    """The terminal view of the summary table."""
    return to_markdown(summary, SUMMARY_VIEW, max_rows=max_rows)


def write_tables(cmp: Any, out: Path, formats: Sequence[str], run_id: str | None = None) -> list[Path]:
    """Every table in each format into ``out`` (as is; :func:`qfair.analyze.outdir.write_analysis`
    is what replaces a directory as a unit), plus settings.json; ``run_id`` goes
    into settings.json and each Parquet file's metadata."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"formats: unknown {bad}; expected some of {', '.join(FORMATS)}")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, df in cmp.tables().items():
        if "parquet" in formats:
            p = out / f"{name}.parquet"
            df.write_parquet(p, metadata={"qfair_run_id": run_id} if run_id else None)
            written.append(p)
        if "csv" in formats:
            p = out / f"{name}.csv"
            # CSV has no lists: a list cell becomes its values joined by spaces
            lists = [c for c, t in df.schema.items() if isinstance(t, (pl.List, pl.Array))]
            df_l = df.with_columns(pl.col(c).cast(pl.List(df.schema[c].inner)) for c in lists
                                   if isinstance(df.schema[c], pl.Array))
            flat = df_l.with_columns(pl.col(c).list.eval(pl.element().cast(pl.Utf8)).list.join(" ") for c in lists)
            flat.write_csv(p)
            written.append(p)
        if "md" in formats:
            p = out / f"{name}.md"
            cols = SUMMARY_VIEW if name == "summary" else None
            limit = None if name in ("summary", "groups", "strata", "calibration", "bias") else 200
            p.write_text(f"# {name}\n\n" + to_markdown(df, cols, max_rows=limit), encoding="utf-8")
            written.append(p)
        if "latex" in formats and name == "summary":
            p = out / "summary.tex"
            p.write_text(to_latex(df), encoding="utf-8")
            written.append(p)
    p = out / "settings.json"
    head = {"run_id": run_id} if run_id else {}
    p.write_text(json.dumps({**head, "settings": cmp.settings, "notes": cmp.notes}, indent=1, default=str) + "\n",
                 encoding="utf-8")
    written.append(p)
    return written
