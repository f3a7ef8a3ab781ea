"""The self-contained HTML report: every figure embedded as a base64 PNG data
URI, inline CSS, no script, no external reference (only ``#anchor`` links), so
the file opens offline and can be mailed as is. The page is the sections of
:mod:`qfair.report.sections`, each rendering itself."""
from __future__ import annotations

import datetime as _dt

from qfair.report.common import Section, _e, _figs, _fmt, _img, table_html  # noqa: F401 - re-exported
from qfair.report.data import AnalysisData
from qfair.report.figures import Figure
from qfair.report.sections import SECTIONS as _REGISTRY
from qfair.report.sections import analysis_kind, report_sections

__all__ = ["render_html", "SECTIONS"]

#: (anchor, title) of the sections every analysis has, in order (qfair.report.sections holds the registry)
SECTIONS = tuple((s.id, s.title) for s in _REGISTRY)

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1180px;
padding:0 18px 40px;color:#1b1b1b;line-height:1.45}
h1{font-size:1.6em;margin:.8em 0 .2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
h3{font-size:1.05em;margin:1.2em 0 .4em}
.meta{color:#555;font-size:.9em}
nav ul{columns:2;font-size:.92em}
figure{margin:14px 0;display:inline-block;vertical-align:top;max-width:100%}
figure img{max-width:100%;height:auto;border:1px solid #e2e2e2}
figcaption{font-size:.85em;color:#444;max-width:760px}
.grid figure{width:49%}
table{border-collapse:collapse;font-size:.82em;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;position:sticky;top:0}
td.l,th.l{text-align:left}
tr:nth-child(even) td{background:#fafafa}
.sig{font-weight:600;color:#b00020}
details{margin:8px 0}summary{cursor:pointer;color:#0b57d0}
pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:.8em;max-height:420px}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px;font-size:.9em}
.scroll{overflow-x:auto}
td.gen{white-space:pre-wrap;max-width:360px;min-width:160px}
td.gen mark{background:#ffe08a}td.gen .rest{color:#777}
"""


def render_html(data: AnalysisData, figs: list[Figure], title: str | None = None) -> str:
    """The whole report as one HTML string."""
    models = ", ".join(data.models) or "(none)"
    title = title or f"qfair report: base vs {models}"
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from qfair import __version__

    kind = analysis_kind(data)
    hides_empty = kind is not None and kind.report_hides_empty
    shown: list[tuple[Section, str]] = []
    for s in report_sections(data):
        body = s.render(data, figs)
        if s.present is not None and not body:  # a kind's own section with nothing to show
            continue
        if hides_empty and s.empty is not None and s.empty(data, figs, body):
            continue  # e.g. a text corpus has no answers: no section that would only say "no data"
        shown.append((s, body))
    # notes about undefined statistics can be many: they go into a fold below the others
    undefined = [n for n in data.notes if " undefined (" in n]
    notes = "".join(f"<p class='note'>{_e(n)}</p>" for n in data.notes if n not in undefined)
    if undefined:
        notes += (f"<details><summary>{len(undefined)} statistic(s) undefined (no row in the summary)</summary>"
                  + "".join(f"<p class='note'>{_e(n)}</p>" for n in undefined) + "</details>")
    nav = "<nav><ul>" + "".join(f"<li><a href='#{s.id}'>{_e(s.title)}</a></li>" for s, _ in shown) + "</ul></nav>"
    body = "".join(f"<section id='{s.id}'><h2>{_e(s.title)}</h2>{html}</section>" for s, html in shown)
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1><p class='meta'>Generated {now} by qfair {_e(__version__)} from "
            f"{_e(data.path)} · {len(data.tasks)} task(s) · "
            f"{data.examples['example_id'].n_unique() if 'example_id' in data.examples.columns else 0} examples · "
            f"{len(data.models)} quantized model(s).</p>"
            f"{notes}{nav}{body}</body></html>\n")
