"""The report's provenance section: the dumps and models compared, their
quantization configs, library versions, tasks and the analysis settings."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from qfair.report.common import Figure, Section, _e, table_html
from qfair.report.data import AnalysisData

__all__ = ["provenance_section", "SECTION"]


def provenance_section(data: AnalysisData, figs: list[Figure]) -> str:
    prov = data.provenance or {}
    dumps = prov.get("dumps") or {}
    out = [f"<p class='meta'>Source: {_e(prov.get('source', 'unknown'))}</p>"]
    rows, libs, quants = [], [], []
    for label, d in dumps.items():
        m = d.get("manifest")
        if not m:
            rows.append({"model": label, "role": d.get("role"), "dump": d.get("path"),
                         "identity": f"manifest unavailable: {d.get('missing', '')}"})
            continue
        mm = (m.get("model") or {})
        ident = mm.get("model") or {}
        q = mm.get("quantization") or {}
        run = m.get("run") or {}
        tok = m.get("tokenizer") or {}
        rows.append({"model": label, "role": d.get("role"), "dump": d.get("path"),
                     "identity": ident.get("id"), "source": ident.get("source"),
                     "gguf file": Path(ident["gguf_file"]).name if ident.get("gguf_file") else None,
                     "gguf sha256": (ident.get("gguf_sha256") or "")[:16],
                     "architecture": ident.get("architecture"), "parameters": ident.get("n_parameters"),
                     "dtype": mm.get("dtype"), "device": mm.get("device"), "quantization": q.get("spec"),
                     "vocab": tok.get("vocab_size"), "vocab sha256": (tok.get("vocab_sha256") or "")[:16],
                     "seed": run.get("seed"), "start": run.get("start_time"), "end": run.get("end_time"),
                     "store": f"{(m.get('storage') or {}).get('mode')}/{(m.get('storage') or {}).get('dtype')}"})
        lv = dict(m.get("libraries") or {})
        lv.update({k: v for k, v in (mm.get("library_versions") or {}).items() if k not in lv})
        libs.append({"model": label, **{k: v for k, v in sorted(lv.items())}})
        quants.append((label, q))
    if rows:
        out.append("<h3>Dumps and models</h3>" + table_html(pl.DataFrame(rows, infer_schema_length=None)))
        ggufs = sorted({r["gguf file"] for r in rows if r.get("gguf file")})
        if ggufs:
            out.append(f"<p class='meta'>GGUF weights ({_e(', '.join(ggufs))}) are de-quantised to float when "
                       "loaded; that float model is the base, so any quantization inside the GGUF file is part "
                       "of the base, and the quantized variants start from the same float weights.</p>")
    if quants:
        out.append("<h3>Quantization configs</h3>")
        for label, q in quants:
            out.append(f"<details><summary>{_e(label)}: {_e(q.get('spec'))} "
                       f"({_e(q.get('config_class') or q.get('backend') or '')})</summary>"
                       f"<pre>{_e(json.dumps(q, indent=1, default=str))}</pre></details>")
    if libs:
        out.append("<h3>Library versions</h3>" + table_html(
            pl.DataFrame([{k: (None if v is None else str(v)) for k, v in r.items()} for r in libs])))
    first = next((d.get("manifest") for d in dumps.values() if d.get("manifest")), None)
    if first and first.get("tasks"):
        trows = [{k: t.get(k) for k in ("name", "kind", "n_examples", "n_source_docs", "limit", "source",
                                         "prompt_format_version")}
                 | {"source sha256": (t.get("source_hash") or "")[:16]} for t in first["tasks"]]
        out.append("<h3>Tasks</h3>" + table_html(pl.DataFrame(trows, infer_schema_length=None)))
    s = data.settings
    if s:
        out.append("<h3>Analysis settings</h3><pre>" + _e(json.dumps(s, indent=1, default=str)) + "</pre>")
    if not dumps:
        out.append("<p class='note'>No provenance: settings.json names no dumps and there is no "
                   "provenance.json in the analysis directory.</p>")
    return "".join(out)


SECTION = Section("provenance", "Provenance", "every analysis", (), provenance_section)
