"""The study's aggregate: one table across models and specs, figures of the
headline metrics against model size and against bits per weight, and one HTML
page linking every pair's own report.

The table (``results.parquet``, ``.csv``; the headline rows in ``results.md``)
has one row per (model, task group, spec, task, summary metric): the model's
label, family and size, the spec, the bits per weight and bytes measured when
each dump's model was loaded (quantized and base), then every column of the
pair's summary table (base, quant, diff, its interval, p and the adjusted
p-values). Pairs are read one at a time (their summary table and the two
manifests), so memory grows with the table, not with the dumps.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from qfair.study.plan import Plan

__all__ = ["aggregate", "AggregateResult", "headline_metrics", "study_table"]

LEAD = ("model", "family", "size", "group", "spec", "quant_spec", "bits_per_weight", "model_bytes", "memory_bytes",
        "base_bits_per_weight", "base_model_bytes", "task", "task_kind", "metric")


@dataclass
class AggregateResult:
    table: pl.DataFrame
    files: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    html: Path | None = None
    notes: list[str] = field(default_factory=list)


def _manifest(dump: Path) -> dict[str, Any]:
    try:
        return json.loads((dump / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _size(m: dict[str, Any]) -> dict[str, Any]:
    return ((m.get("model") or {}).get("size") or {}) if isinstance(m.get("model"), dict) else {}


def _family(m: dict[str, Any]) -> str | None:
    model = m.get("model") or {}
    inner = model.get("model") if isinstance(model, dict) else None
    return inner.get("model_type") if isinstance(inner, dict) else None


def study_table(plan: Plan) -> tuple[pl.DataFrame, list[str]]:
    """The cross-model table (module doc) and notes on pairs without an analysis."""
    frames: list[pl.DataFrame] = []
    notes: list[str] = []
    models = {m.label: m for m in plan.study.models}
    specs = {s.label: s.spec for s in (plan.study.base, *plan.study.specs)}
    for a in plan.analyses:
        summ = a.path / "summary.parquet"
        if not summ.is_file():
            notes.append(f"{a.key}: no analysis ({summ} missing)")
            continue
        df = pl.read_parquet(summ)
        bm, qm = _manifest(a.base), _manifest(a.quant)
        bs, qs = _size(bm), _size(qm)
        entry = models[a.model]
        size = entry.size if entry.size is not None else bs.get("n_weights")
        lead = {
            "model": a.model, "family": entry.family or _family(bm), "size": None if size is None else float(size),
            "group": a.group, "spec": a.spec, "quant_spec": specs.get(a.spec, a.spec),
            "bits_per_weight": qs.get("bits_per_weight"), "model_bytes": qs.get("stored_bytes"),
            "memory_bytes": qs.get("memory_bytes"), "base_bits_per_weight": bs.get("bits_per_weight"),
            "base_model_bytes": bs.get("stored_bytes"),
        }
        schema = {"model": pl.Utf8, "family": pl.Utf8, "size": pl.Float64, "group": pl.Utf8, "spec": pl.Utf8,
                  "quant_spec": pl.Utf8, "bits_per_weight": pl.Float64, "model_bytes": pl.Int64,
                  "memory_bytes": pl.Int64, "base_bits_per_weight": pl.Float64, "base_model_bytes": pl.Int64}
        if "family" in df.columns:  # the summary's multiple-testing family; "family" here is the model's
            df = df.rename({"family": "test_family"})
        df = df.drop("model").with_columns(pl.lit(v, dtype=schema[k]).alias(k) for k, v in lead.items())
        rel = os.path.relpath(a.path, plan.out)
        df = df.with_columns(pl.lit(rel).alias("analysis"))
        frames.append(df)
    if not frames:
        return pl.DataFrame(), notes
    t = pl.concat(frames, how="diagonal_relaxed")
    return t.select(*[c for c in LEAD if c in t.columns], *[c for c in t.columns if c not in LEAD]), notes


def headline_metrics(table: pl.DataFrame, wanted: list[str] | None = None) -> dict[str, list[str]]:
    """Per task: the metrics the figures show (the study file's ``analysis.metrics``,
    else the task kind's headline metrics and the token KL)."""
    from qfair.metrics.task_kinds import get_task_kind

    out: dict[str, list[str]] = {}
    if table.height == 0:
        return out
    have = table.select("task", "task_kind", "metric").unique()
    for task, kind in table.select("task", "task_kind").unique(maintain_order=True).iter_rows():
        present = set(have.filter(pl.col("task") == task)["metric"].to_list())
        if wanted:
            names = [m for m in wanted if m in present]
        else:
            tk = get_task_kind(kind)
            names = [m for m in (*(("acc",) if tk.correctness and "acc" not in tk.headline else ()), *tk.headline,
                                 "kl_pq") if m in present]
        if names:
            out[task] = list(dict.fromkeys(names))
    return out


# ---------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def _yerr(sub: pl.DataFrame) -> Any:
    import numpy as np

    d = sub["diff"].cast(pl.Float64).to_numpy()
    lo = sub["ci_low"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    hi = sub["ci_high"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    return np.vstack([np.nan_to_num(d - lo, nan=0.0).clip(0), np.nan_to_num(hi - d, nan=0.0).clip(0)])


def _legend(ax: Any, most: int = 20) -> None:
    """A legend when it stays readable (at most ``most`` entries)."""
    handles, labels = ax.get_legend_handles_labels()
    if 0 < len(labels) <= most:
        ax.legend(fontsize=7)


def _finish(fig: Any, ax: Any, metric: str, desc: bool, title: str, path: Path) -> None:
    """Label, zero line (differences only), legend; save and close."""
    import matplotlib.pyplot as plt

    ax.set_ylabel(_ylabel(metric, desc))
    if not desc:
        ax.axhline(0, color="#888", lw=0.8)
    ax.set_title(title)
    _legend(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ylabel(metric: str, descriptive: bool) -> str:
    return f"{metric} (base vs quantized)" if descriptive else f"Δ {metric} (quantized − base)"


def _figures(table: pl.DataFrame, out_dir: Path, wanted: list[str] | None, confidence: float) -> list[dict[str, Any]]:
    from qfair.analyze.summary import DESCRIPTIVE_METRICS

    plt = _plt()
    out_dir.mkdir(parents=True, exist_ok=True)
    figs: list[dict[str, Any]] = []
    specs = table["spec"].unique(maintain_order=True).to_list()
    models = table["model"].unique(maintain_order=True).to_list()
    families = [f for f in table["family"].unique(maintain_order=True).to_list()]
    scol = {s: _COLORS[i % len(_COLORS)] for i, s in enumerate(specs)}
    fmark = {f: _MARKERS[i % len(_MARKERS)] for i, f in enumerate(families)}
    mcol = {m: _COLORS[i % len(_COLORS)] for i, m in enumerate(models)}
    pct = f"{100 * confidence:g}%"
    for group in table["group"].unique(maintain_order=True).to_list():
        tg = table.filter(pl.col("group") == group)
        for task, metrics in headline_metrics(tg, wanted).items():
            for metric in metrics:
                rows = tg.filter((pl.col("task") == task) & (pl.col("metric") == metric) & pl.col("diff").is_not_null())
                if rows.height == 0:
                    continue
                desc = metric in DESCRIPTIVE_METRICS
                stem = re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{group}_{task}_{metric}")  # one plain file name
                # against model size, one line per (spec, family)
                if rows["size"].drop_nulls().len():
                    fig, ax = plt.subplots(figsize=(6.4, 4.0))
                    for spec in specs:
                        for fam in families:
                            sub = rows.filter((pl.col("spec") == spec) & (pl.col("family").eq_missing(fam)) &
                                              pl.col("size").is_not_null()).sort("size")
                            if sub.height == 0:
                                continue
                            ax.errorbar(sub["size"].to_numpy(), sub["diff"].to_numpy(), yerr=_yerr(sub),
                                        color=scol[spec], marker=fmark[fam], capsize=3, lw=1.4,
                                        label=f"{spec} ({fam})" if fam else spec)
                    ax.set_xscale("log")
                    ax.set_xlabel("model size (parameters, log scale)")
                    p = out_dir / f"size_{stem}.png"
                    _finish(fig, ax, metric, desc, f"{task}: {metric} against model size ({group})", p)
                    figs.append({"path": p, "title": f"{task}: {metric} against model size",
                                 "caption": f"Group {group}. One line per quantization spec and family; bars: "
                                            f"{pct} bootstrap intervals of the pair's summary."})
                # against bits per weight, one line per model (its base at Δ = 0)
                if rows["bits_per_weight"].drop_nulls().len():
                    fig, ax = plt.subplots(figsize=(6.4, 4.0))
                    for m in models:
                        sub = rows.filter((pl.col("model") == m) & pl.col("bits_per_weight").is_not_null()
                                          ).sort("bits_per_weight")
                        if sub.height == 0:
                            continue
                        x = sub["bits_per_weight"].to_list()
                        y = sub["diff"].to_list()
                        ax.errorbar(x, y, yerr=_yerr(sub), color=mcol[m], marker="o", capsize=3, lw=1.4, label=m)
                        bb = sub["base_bits_per_weight"][0]
                        if bb is not None and not desc:
                            ax.plot([x[-1], bb], [y[-1], 0.0], color=mcol[m], ls=":", lw=1)
                            ax.plot([bb], [0.0], color=mcol[m], marker="D", ms=5)
                    ax.set_xlabel("bits per weight (measured)")
                    p = out_dir / f"bits_{stem}.png"
                    _finish(fig, ax, metric, desc, f"{task}: {metric} against bits per weight ({group})", p)
                    figs.append({"path": p, "title": f"{task}: {metric} against bits per weight",
                                 "caption": f"Group {group}. One line per model; diamonds: the base model (Δ = 0) "
                                            f"at its own bits per weight; bars: {pct} bootstrap intervals."})
    return figs


# ---------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------

def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _human(n: Any) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return ""
    n = float(n)
    for unit, f in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= f:
            return f"{n / f:.3g}{unit}"
    return f"{n:.3g}"


def _page(plan: Plan, table: pl.DataFrame, figs: list[dict[str, Any]], exec_info: dict[str, Any] | None,
          notes: list[str], wanted: list[str] | None) -> str:
    from qfair.report.html import _CSS, table_html

    st = plan.study
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(st.name)}: qfair study</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{_e(st.name)}</h1><p class='meta'>qfair study of {len(st.models)} model(s) x "
             f"{len(st.specs)} quantization spec(s) x {len(st.groups)} task group(s); study file "
             f"{_e(st.path)}; written {_dt.datetime.now().isoformat(timespec='seconds')}</p>"]
    for n in notes:
        parts.append(f"<p class='note'>{_e(n)}</p>")
    parts.append("<h2>Models</h2>")
    if table.height:
        models = table.group_by("model", "family", "spec", maintain_order=True).agg(
            pl.col("size").first(), pl.col("bits_per_weight").first(), pl.col("model_bytes").first(),
            pl.col("base_bits_per_weight").first(), pl.col("base_model_bytes").first())
        parts.append(table_html(models.with_columns(pl.col("size").map_elements(_human, return_dtype=pl.Utf8))))
        head = headline_metrics(table, wanted)
        if wanted and not head:  # none of analysis.metrics was measured: say so, show the default headline
            notes.append(f"analysis.metrics: none of {', '.join(wanted)} is among the measured metrics; "
                         "showing each task's headline metrics instead")
            wanted = None
            head = headline_metrics(table, None)
        keep = pl.lit(False) if not head else pl.any_horizontal([(pl.col("task") == t) & pl.col("metric").is_in(ms) for t, ms in head.items()]) \
            if head else pl.lit(False)
        parts.append("<h2>Headline metrics</h2><p class='meta'>Every summary metric of every pair is in "
                     "results.parquet / results.csv; here the headline metrics.</p>")
        hv = table.filter(keep).select(*[c for c in ("model", "family", "group", "spec", "bits_per_weight", "task",
                                                      "metric", "n", "base", "quant", "diff", "ci_low", "ci_high",
                                                      "p", "p_holm") if c in table.columns])
        parts.append(table_html(hv, sig_col="p_holm"))
    else:
        parts.append("<p class='note'>No pair was analysed.</p>")
    if figs:
        parts.append("<h2>Figures</h2><div class='grid'>")
        for f in figs:
            b64 = base64.b64encode(Path(f["path"]).read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{_e(f['title'])}' src='data:image/png;base64,{b64}'><figcaption>"
                         f"<b>{_e(f['title'])}.</b> {_e(f['caption'])}</figcaption></figure>")
        parts.append("</div>")
    parts.append("<h2>Pairs</h2><ul>")
    for a in plan.analyses:
        rep = a.path / "report" / "report.html"
        rel = os.path.relpath(rep, plan.out)
        link = f"<a href='{_e(rel)}'>report</a>" if rep.is_file() else "(no report)"
        parts.append(f"<li>{_e(a.model)} / {_e(a.group)}: base vs {_e(a.spec)} — {link}, tables in "
                     f"<code>{_e(os.path.relpath(a.path, plan.out))}</code></li>")
    parts.append("</ul><h2>Dumps</h2>")
    rows = []
    for d in plan.dumps:
        done = (exec_info or {}).get("dumps", {}).get(d.key, {})
        m = _manifest(d.path)
        sz = _size(m)
        rows.append({"dump": d.key, "quant": d.quant, "status": m.get("status", "missing"),
                     "action": done.get("action", d.action), "seconds": done.get("seconds"),
                     "rows": (m.get("storage") or {}).get("n_tokens"),
                     "bits_per_weight": sz.get("bits_per_weight"), "model_bytes": sz.get("stored_bytes")})
    parts.append(table_html(pl.DataFrame(rows, infer_schema_length=None)))
    failed = (exec_info or {}).get("failed") or {}
    if failed:
        parts.append("<h2>Failed jobs</h2><ul>" + "".join(f"<li>{_e(k)}: {_e(v)}</li>" for k, v in failed.items())
                     + "</ul>")
    parts.append("</body></html>")
    return "".join(parts)


def aggregate(plan: Plan, exec_info: dict[str, Any] | None = None) -> AggregateResult:
    """Write the study's table, figures and report.html into the plan's output directory."""
    from qfair.fsutil import atomic_write_bytes

    table, notes = study_table(plan)
    out = plan.out
    files: list[Path] = []
    wanted = plan.study.analysis.get("metrics")
    figs: list[dict[str, Any]] = []
    if table.height:
        p = out / "results.parquet"
        table.write_parquet(p, compression="zstd")
        files.append(p)
        csv = table.with_columns(pl.col(c).cast(pl.Utf8) for c, t in table.schema.items() if t.is_nested())
        csv.write_csv(out / "results.csv")
        files.append(out / "results.csv")
        head = headline_metrics(table, wanted)
        if wanted and not head:  # none of analysis.metrics was measured: say so, show the default headline
            notes.append(f"analysis.metrics: none of {', '.join(wanted)} is among the measured metrics; "
                         "showing each task's headline metrics instead")
            wanted = None
            head = headline_metrics(table, None)
        keep = pl.lit(False) if not head else pl.any_horizontal([(pl.col("task") == t) & pl.col("metric").is_in(ms) for t, ms in head.items()])
        md = table.filter(keep).select(*[c for c in ("model", "family", "size", "group", "spec", "bits_per_weight",
                                                      "task", "metric", "base", "quant", "diff", "ci_low", "ci_high",
                                                      "p_holm") if c in table.columns])
        atomic_write_bytes(out / "results.md", _markdown(md).encode("utf-8"))
        files.append(out / "results.md")
        conf = float(plan.study.analysis.get("confidence", 0.95))
        figs = _figures(table, out / "figures", wanted, conf)
    page = _page(plan, table, figs, exec_info, notes, wanted)
    atomic_write_bytes(out / "report.html", page.encode("utf-8"))
    return AggregateResult(table, files, [f["path"] for f in figs], out / "report.html", notes)


def _markdown(df: pl.DataFrame) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.iter_rows()]
    return "\n".join(lines) + "\n"
