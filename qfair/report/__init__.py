"""``qfair report``: figures and a self-contained HTML page from an analysis directory.

::

    from qfair.report import build_report
    r = build_report("runs/analysis")            # -> runs/analysis/report/report.html + PNGs
    r.html, r.figures

The input is what ``qfair analyze`` writes (tables in Parquet or CSV and
``settings.json``); provenance comes from ``provenance.json`` there when
present, else from the dump manifests at the paths ``settings.json`` records.
Figures are matplotlib (Agg); the HTML embeds them as data URIs and references
nothing outside itself. Importing this package imports neither matplotlib nor
torch.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from qfair.report.data import ReportError, collect_provenance, load_analysis, write_provenance

__all__ = ["build_report", "ReportResult", "ReportError", "load_analysis", "collect_provenance",
           "write_provenance"]


@dataclass
class ReportResult:
    out: Path
    html: Path
    figures: list[Path] = field(default_factory=list)
    provenance: Path | None = None
    notes: list[str] = field(default_factory=list)


def build_report(analysis_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                 title: str | None = None, progress: bool = False) -> ReportResult:
    """Read ``analysis_dir``, draw the figures into ``out`` (default
    ``analysis_dir/report``) and write ``out/report.html``."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ReportError("qfair report needs matplotlib: pip install 'qfair[report]' (or pip install matplotlib)")
    if (Path(analysis_dir) / "sensitivity.json").is_file():  # a `qfair sensitivity` directory
        from qfair.report.sensitivity import build_sensitivity_report

        return build_sensitivity_report(analysis_dir, out, title=title)
    from qfair.report.figures import make_figures
    from qfair.report.html import render_html

    data = load_analysis(analysis_dir)
    from qfair.report.sections import report_sections

    # a dump kind's own section (generation) may have something to show without summary rows
    if data.summary.height == 0 and not any(s.present is not None and s.present(data) for s in report_sections(data)):
        raise ReportError(f"{Path(analysis_dir) / 'summary.parquet'}: no rows; nothing to report")
    out_dir = Path(out) if out is not None else Path(analysis_dir) / "report"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        figs = make_figures(data, out_dir, progress=progress)
        page = render_html(data, figs, title=title)
        html_path = out_dir / "report.html"
        tmp = out_dir / ".report.html.tmp"
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, html_path)
        prov_path = out_dir / "provenance.json"
        prov_path.write_text(json.dumps(data.provenance, indent=1, default=str, ensure_ascii=False) + "\n",
                             encoding="utf-8")
    except OSError as e:
        raise ReportError(f"{getattr(e, 'filename', None) or out_dir}: cannot write the report "
                          f"({e.strerror or e})") from None
    notes = []
    for label, d in (data.provenance.get("dumps") or {}).items():
        if d.get("missing"):
            notes.append(f"provenance of {label}: {d['missing']}")
    return ReportResult(out_dir, html_path, [f.path for f in figs if f.path is not None], prov_path, notes)

