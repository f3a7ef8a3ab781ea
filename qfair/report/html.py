"""The self-contained HTML report: every figure embedded as a base64 PNG data
URI, inline CSS, no script, no external reference (only ``#anchor`` links), so
the file opens offline and can be mailed as is."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import polars as pl

from qfair.report.common import _e, _figs, _fmt, _img, table_html  # noqa: F401 - re-exported
from qfair.report.data import AnalysisData
from qfair.report.figures import (
    KL_PERCENTILES,
    Figure,
    accuracy_view,
    flip_table,
    group_view,
    kl_percentiles,
    strata_view,
    uncertainty_view,
)
from qfair.report.text import headline_rows, model_headlines

__all__ = ["render_html", "SECTIONS"]

SECTIONS = (
    ("headline", "Headline numbers"),
    ("calibration", "Calibration: reliability diagrams"),
    ("tokens", "Token distributions: KL(base ‖ quantized)"),
    ("strata", "Uncertainty: strata and tests"),
    ("accuracy", "Accuracy and flips"),
    ("groups", "Groups"),
    ("bias", "Bias benchmarks"),
    ("families", "Across languages: task families"),
    ("summary", "Summary table"),
    ("provenance", "Provenance"),
)

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


def _headline(data: AnalysisData) -> str:
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


def _kl_table(data: AnalysisData) -> str:
    tok = data.tokens
    if tok.height == 0 or "kl_pq" not in tok.columns:
        return ""
    rows = []
    for m in data.models:
        t = tok.filter(pl.col("model") == m)
        st = kl_percentiles(t["kl_pq"].cast(pl.Float64).to_numpy())
        if not st:
            continue
        r = {"model": m, "tokens": int(st["n"]), "mean KL": st["mean"], "± stderr": st["stderr"],
             "max": st["max"]}
        for p in KL_PERCENTILES:
            r[f"{'median' if p == 50 else f'{p:g}%'}"] = st[f"p{p:g}"]
        r["min"] = st["min"]
        if "delta_p" in t.columns:
            dp = t["delta_p"].cast(pl.Float64).drop_nans().drop_nulls()
            r["RMS Δp"] = float((dp ** 2).mean() ** 0.5) if dp.len() else None
        if "top1_agree" in t.columns:
            r["same top p"] = float(t["top1_agree"].cast(pl.Float64).drop_nans().mean())
        rows.append(r)
    if not rows:
        return ""
    return ("<h3>KL statistics as llama.cpp prints them</h3>" + table_html(pl.DataFrame(rows)) +
            "<p class='meta'>KL(base ‖ quantized) in nats per scored token; percentiles by linear "
            "interpolation; Δp = p_quant(target) − p_base(target); same top p = share of tokens whose "
            "most likely next token is the same.</p>")


def _provenance(data: AnalysisData) -> str:
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


def render_html(data: AnalysisData, figs: list[Figure], title: str | None = None) -> str:
    """The whole report as one HTML string."""
    models = ", ".join(data.models) or "(none)"
    title = title or f"qfair report: base vs {models}"
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from qfair import __version__

    sec: dict[str, str] = {}
    sec["headline"] = _headline(data)
    cal_cols = ["model", "task", "metric", "n", "base", "base_low", "base_high", "quant", "quant_low", "quant_high",
                "diff", "ci_low", "ci_high", "p", "p_holm"]
    has_kind = "kind" in data.summary.columns
    sec["calibration"] = (_figs(figs, "calibration", grid=True) +
                          "<details><summary>Calibration summary rows (ECE, MCE, RMS-CE, debiased L2, and the "
                          "study's ACE / MCE estimators)</summary>" +
                          table_html(data.summary.filter(pl.col("kind").is_in(["calibration", "study"]))
                                     if has_kind else pl.DataFrame(), cal_cols, sig_col="p_holm") +
                          "<p class='meta'>base_low … quant_high: each model's own value with its percentile "
                          "bootstrap interval; conf_pos / conf_neg: mean confidence on correct / incorrect answers; "
                          "ace_study / mce_study: the reference study's estimators as published (docs/metrics.md)."
                          "</p></details>")
    sec["tokens"] = _figs(figs, "tokens") + _kl_table(data)
    sv = strata_view(data)
    uv = uncertainty_view(data)
    ucols = ["model", "task", "metric", "n", "diff", "ci_low", "ci_high", "p", "p_perm", "p_holm", "p_bh"]
    sec["strata"] = (_figs(figs, "strata") +
                     ("<h3>Tests: does the shift grow with the base model's uncertainty?</h3>" +
                      table_html(uv.filter(pl.col("statistic") == "spearman").sort("p", nulls_last=True),
                                 ucols, max_rows=60, sig_col="p_holm") +
                      "<p class='meta'>spearman(u,s): rank correlation over examples (token rows for kind "
                      "uncertainty_token, resampled by example) of the base model's uncertainty u with the shift s, "
                      "bootstrap interval and the p that inverts it; p_perm: permutation test. strata_diff rows "
                      "(mean shift in the most minus the least uncertain stratum) are in the summary table.</p>"
                      if uv.height else "") +
                     ("<details><summary>Per-task strata (strata table of qfair analyze)</summary>" +
                      table_html(sv) + "</details>" if sv.height else ""))
    ft = flip_table(data)
    av = accuracy_view(data)
    sec["accuracy"] = (_figs(figs, "accuracy") +
                       ("<details><summary>Accuracy per model and task (Wilson intervals)</summary>" +
                        table_html(av) + "</details>" if av.height else "") +
                       "<h3>Flip table</h3>" +
                       table_html(ft) +
                       "<p class='meta'>Tasks with gold answers. c2i = correct → incorrect, i2c = incorrect → "
                       "correct, changed = the predicted answer changed; flip_low/high: Wilson interval of "
                       "(c2i + i2c) / n (a rate, 0 for identical models: no test); p_mcnemar: exact two-sided "
                       "McNemar test of c2i vs i2c (accuracy unchanged), unadjusted.</p>")
    gv = group_view(data)
    sec["groups"] = (_figs(figs, "groups") +
                     (("<h3>Group rows, sorted by effect</h3>" +
                       table_html(gv, ["model", "task", "group", "metric", "n", "base", "quant", "diff", "ci_low",
                                       "ci_high", "ci_method", "gap", "p", "p_holm", "p_bh"], sig_col="p_holm"))
                      if gv.height else "<p class='meta'>No task has two or more groups.</p>") +
                     ("<p class='meta'>gap = the group's difference minus the whole task's; p_holm / p_bh adjusted "
                      "over all rows of the groups table.</p>" if gv.height else ""))
    from qfair.report.bias import bias_section

    sec["bias"] = bias_section(data, figs, table_html, _img)
    from qfair.report.families import family_section

    sec["families"] = family_section(data, figs, table_html, _img) or (
        "<p class='meta'>No task family with two or more members in this analysis (xstorycloze_*, "
        "crows_pairs_*).</p>")
    sec["summary"] = ("<p class='meta'>Every row of the analysis: diff = quantized − base (or the comparison "
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
    sec["provenance"] = _provenance(data)
    sections = SECTIONS
    from qfair.report.generation import generation_section

    sec["generation"] = generation_section(data, figs)
    if sec["generation"]:  # generation dumps: their section follows the headline
        sections = (SECTIONS[0], ("generation", "Generation: what the models wrote"), *SECTIONS[1:])
    from qfair.report.corpus import corpus_section

    sec["corpus"] = corpus_section(data, table_html)
    if sec["corpus"]:  # text dumps: llama.cpp's summary follows the headline
        sections = (sections[0], ("corpus", "Free text: llama.cpp's KL-divergence summary"), *sections[1:])
    if data.settings.get("kind") == "text":
        # a text corpus has no answers: leave out the sections that would only say "no data"
        def no_figs(name: str) -> bool:
            return not any(f.section == name for f in figs)

        empty = {"calibration": no_figs("calibration") and not (has_kind and data.summary.filter(
                     pl.col("kind").is_in(["calibration", "study"])).height),
                 "strata": no_figs("strata") and uv.height == 0 and sv.height == 0,
                 "accuracy": no_figs("accuracy") and av.height == 0 and ft.height == 0,
                 "groups": no_figs("groups") and gv.height == 0,
                 "bias": no_figs("bias") and "No bias benchmark in this analysis" in sec["bias"]}
        sections = tuple(s for s in sections if not empty.get(s[0], False))
    # notes about undefined statistics can be many: they go into a fold below the others
    undefined = [n for n in data.notes if " undefined (" in n]
    notes = "".join(f"<p class='note'>{_e(n)}</p>" for n in data.notes if n not in undefined)
    if undefined:
        notes += (f"<details><summary>{len(undefined)} statistic(s) undefined (no row in the summary)</summary>"
                  + "".join(f"<p class='note'>{_e(n)}</p>" for n in undefined) + "</details>")
    nav = "<nav><ul>" + "".join(f"<li><a href='#{k}'>{_e(v)}</a></li>" for k, v in sections) + "</ul></nav>"
    body = "".join(f"<section id='{k}'><h2>{_e(v)}</h2>{sec[k]}</section>" for k, v in sections)
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_e(title)}</h1><p class='meta'>Generated {now} by qfair {_e(__version__)} from "
            f"{_e(data.path)} · {len(data.tasks)} task(s) · "
            f"{data.examples['example_id'].n_unique() if 'example_id' in data.examples.columns else 0} examples · "
            f"{len(data.models)} quantized model(s).</p>"
            f"{notes}{nav}{body}</body></html>\n")
