"""What every section of the report draws with: the :class:`Figure` record,
the :class:`Section` a section declares itself with, matplotlib's Agg setup, the models' colours and safe file names, and the HTML
pieces (escaping, number format, tables, embedded images, a section's figures).

It imports no other module of the report, so the sections (:mod:`.figures`,
:mod:`.bias`, :mod:`.generation`, :mod:`.html`) all import it and none of
them imports another to borrow a helper.
"""
from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

__all__ = ["Figure", "Section", "BASE_COLOR", "model_colors", "table_html"]

BASE_COLOR = "#222222"


@dataclass
class Figure:
    name: str          # file stem, e.g. "reliability_piqa"
    fig: Any           # matplotlib.figure.Figure (closed after saving)
    title: str
    caption: str
    section: str
    path: Path | None = None


@dataclass(frozen=True)
class Section:
    """One section of the report, declared by the module that draws it and listed
    in :mod:`qfair.report.sections` (or named by the dump kind whose tables it shows,
    ``DumpKind.report``)."""

    id: str                 # the HTML anchor, e.g. "calibration"
    title: str
    owner: str              # what it shows: the dump kind or task kinds it belongs to, or "every analysis"
    needs: tuple[str, ...]  # the analysis tables it reads
    render: Callable[[Any, list[Figure]], str]                 # (tables, drawn figures) -> its HTML
    figures: tuple[Callable[[Any], list[Figure]], ...] = ()    # draw its figures (tables -> figures)
    # whether it has nothing to show (tables, figures, its HTML): a dump kind without answers
    # (DumpKind.report_hides_empty) leaves such a section out; None: always shown
    empty: Callable[[Any, list[Figure], str], bool] | None = None
    # a dump kind's own section: whether the analysis holds its tables (the report has something to show
    # even with an empty summary); it is left out when it renders nothing
    present: Callable[[Any], bool] | None = None


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


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _fmt(v: Any, col: str = "") -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        is_p = col.startswith("p") and col not in ("pred", "pct_low", "pct_high", "pct_stereotype")
        if math.isnan(v):
            return "" if is_p else "nan"
        if is_p:
            return "&lt;1e-4" if v < 1e-4 else f"{v:.4f}"
        if v == 0:
            return "0"
        a = abs(v)
        if a < 1e-3 or a >= 1e5:
            return f"{v:.3g}"
        return f"{v:.4f}"
    if isinstance(v, (dict, list)):
        return _e(json.dumps(v, default=str))
    return _e(v)


def table_html(df: pl.DataFrame, columns: Sequence[str] | None = None, max_rows: int | None = None,
               sig_col: str | None = None) -> str:
    """An HTML table of ``df`` (text columns left-aligned); rows with ``sig_col`` < 0.05 in bold."""
    if df.height == 0:
        return "<p class='meta'>(no rows)</p>"
    cols = [c for c in (columns or df.columns) if c in df.columns]
    text_cols = {c for c in cols if not df.schema[c].is_numeric()}
    out = ["<div class='scroll'><table><thead><tr>"]
    out += [f"<th class='{'l' if c in text_cols else ''}'>{_e(c)}</th>" for c in cols]
    out.append("</tr></thead><tbody>")
    view = df.select(cols) if max_rows is None else df.select(cols).head(max_rows)
    for r in view.iter_rows(named=True):
        sig = sig_col is not None and isinstance(r.get(sig_col), float) and r[sig_col] < 0.05
        out.append("<tr" + (" class='sig'" if sig else "") + ">")
        out += [f"<td class='{'l' if c in text_cols else ''}'>{_fmt(r[c], c)}</td>" for c in cols]
        out.append("</tr>")
    out.append("</tbody></table></div>")
    if max_rows is not None and df.height > max_rows:
        out.append(f"<p class='meta'>({df.height - max_rows} more rows in the Parquet/CSV file)</p>")
    return "".join(out)


def _img(f: Figure) -> str:
    assert f.path is not None
    b64 = base64.b64encode(Path(f.path).read_bytes()).decode("ascii")
    return (f"<figure id='fig-{_e(f.name)}'><img alt='{_e(f.title)}' src='data:image/png;base64,{b64}'>"
            f"<figcaption><b>{_e(f.title)}.</b> {_e(f.caption)} <span class='meta'>({_e(Path(f.path).name)})"
            f"</span></figcaption></figure>")


def _figs(figs: list[Figure], section: str, grid: bool = False) -> str:
    fs = [f for f in figs if f.section == section]
    if not fs:
        return "<p class='note'>No figure: the analysis tables hold no data for this view.</p>"
    body = "".join(_img(f) for f in fs)
    return f"<div class='grid'>{body}</div>" if grid else body
