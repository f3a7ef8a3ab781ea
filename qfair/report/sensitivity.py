"""The report of a sensitivity directory (``qfair report DIR`` where DIR holds
``sensitivity.json``): a heatmap of units x metrics, the top units per metric
with their intervals, the swap check and timing, and the recommendation with
its held-out validation when ``DIR/recommend`` holds one. Self-contained HTML
like the analysis report (images embedded)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

# (column label, set, metric, what is shown): single-unit deltas; larger harm = warmer
HEATMAP_COLUMNS = (
    ("gap shift", "bias", "gap_shift"),
    ("Δ pct_stereotype", "bias", "pct_stereotype"),
    ("Δ likelihood_diff", "bias", "likelihood_diff"),
    ("Δ stereo_gap", "bias", "stereo_gap"),
    ("token KL", "all", "kl"),
    ("Δ acc", "general", "acc"),
)


def _cell(t: pl.DataFrame, unit: str, set_name: str, metric: str, group: str | None = None) -> dict | None:
    f = t.filter((pl.col("unit") == unit) & (pl.col("set") == set_name) & (pl.col("metric") == metric)
                 & (pl.col("group").is_null() if group is None else pl.col("group") == group))
    return f.row(0, named=True) if f.height else None


def heatmap_data(scan: dict[str, Any], mode: str = "single") -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(units, column labels, deltas [units x columns], significant mask: a
    signed metric whose interval excludes 0). Columns: the headline metrics, then gap shift per bias type."""
    t = scan["sensitivity"].filter(pl.col("mode") == mode)
    units = scan["units"]["unit"].to_list()
    cols = [(lab, s, m, None) for lab, s, m in HEATMAP_COLUMNS]
    groups = sorted(g for g in t.filter(pl.col("set") == "bias")["group"].unique().to_list() if g is not None)
    cols += [(f"gap shift: {g}", "bias", "gap_shift", g) for g in groups]
    vals = np.full((len(units), len(cols)), np.nan)
    sig = np.zeros_like(vals, dtype=bool)
    for i, u in enumerate(units):
        for j, (_, s, m, g) in enumerate(cols):
            r = _cell(t, u, s, m, g)
            if r is not None:
                vals[i, j] = r["delta"]
                lo, hi = r["ci_low"], r["ci_high"]
                # gap shift and KL are never negative: an interval above 0 says nothing, so no mark
                sig[i, j] = m not in ("gap_shift", "kl") and lo is not None and hi is not None and (lo > 0 or hi < 0)
    return units, [c[0] for c in cols], vals, sig


def _harm_sign(label: str) -> float:
    return -1.0 if label == "Δ acc" else 1.0


def fig_heatmap(scan: dict[str, Any], out: Path, mode: str) -> Path | None:
    from qfair.report.figures import _plt

    units, labels, vals, sig = heatmap_data(scan, mode)
    if not np.isfinite(vals).any():
        return None
    plt = _plt()
    shown = vals.copy()
    for j, lab in enumerate(labels):
        col = shown[:, j] * _harm_sign(lab)
        if lab.startswith("Δ") and lab != "Δ acc":
            col = np.abs(col)  # bias metrics: a change either way is harm
        m = np.nanmax(np.abs(col)) if np.isfinite(col).any() else 0.0
        shown[:, j] = col / m if m > 0 else col
    h = max(3.0, 0.28 * len(units) + 1.6)
    fig, ax = plt.subplots(figsize=(1.0 * len(labels) + 3.2, h))
    im = ax.imshow(shown, aspect="auto", cmap="magma_r", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(units)), units, fontsize=7)
    for i in range(len(units)):
        for j in range(len(labels)):
            if sig[i, j]:
                ax.text(j, i, "•", ha="center", va="center", color="#2ca02c", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03, label="harm, scaled to the column's largest")
    ax.set_title(f"{'Quantizing only this unit' if mode == 'single' else 'Keeping only this unit in float'}"
                 f" — {mode}", fontsize=10)
    fig.tight_layout()
    path = out / f"sensitivity_heatmap_{mode}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def top_table(scan: dict[str, Any], n: int = 5, mode: str = "single") -> pl.DataFrame:
    """The ``n`` most harmful units per headline metric, with delta and interval."""
    from qfair.sensitivity.scan import harm_expr

    t = scan["sensitivity"].filter((pl.col("mode") == mode) & pl.col("group").is_null())
    parts = []
    for _, s, m in HEATMAP_COLUMNS:
        x = t.filter((pl.col("set") == s) & (pl.col("metric") == m))
        if x.height == 0:
            continue
        x = x.with_columns(harm_expr(m).alias("harm")).sort(["harm", "unit_index"], descending=[True, False])
        parts.append(x.head(n).with_columns(pl.int_range(1, pl.len() + 1).alias("rank"))
                     .select(["metric", "set", "rank", "unit", "delta", "ci_low", "ci_high", "p", "n"]))
    return pl.concat(parts) if parts else pl.DataFrame()


def build_sensitivity_report(scan_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                             title: str | None = None) -> Any:
    from qfair.report import ReportResult
    from qfair.report.data import ReportError
    from qfair.report.html import _CSS, _e, table_html
    from qfair.sensitivity.scan import SensitivityError, read_scan

    try:
        scan = read_scan(scan_dir)
    except SensitivityError as e:
        raise ReportError(str(e)) from None
    out_dir = Path(out) if out is not None else Path(scan_dir) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    man = scan["manifest"]
    st = man["settings"]
    modes = [m for m in ("single", "leave-one-out") if m in set(scan["sensitivity"]["mode"].to_list())]
    figs = [p for p in (fig_heatmap(scan, out_dir, m) for m in modes) if p is not None]
    html = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title or 'qfair sensitivity')}</title>"
            f"<style>{_CSS}</style></head><body>",
            f"<h1>{_e(title or 'Where the quantization bias comes from')}</h1>",
            f"<p class='meta'>model {_e(st.get('model') or 'embedded default')} · spec <b>{_e(st['quant'])}</b> · "
            f"{len(scan['units'])} {_e(st['unit'])} units · modes {_e(', '.join(st['modes']))} · "
            f"probes {_e(', '.join(st['tasks']))} · split {_e(st['split'])}: {man['split']['n_scan']} scan / "
            f"{man['split']['n_heldout']} held-out examples</p>"]
    chk = man["swap_check"]
    html.append(f"<p>Swap check: the float model with every unit's quantized modules in place against the model "
                f"loaded with the spec: max |Δlogit| = {chk['max_abs_logit_diff']:.3g} over {chk['positions']} "
                f"positions ({'bitwise equal' if chk['bitwise_equal'] else 'not bitwise equal'}).</p>")
    html.append("<h2 id='heatmap'>Units × metrics</h2><p>Each cell is the change a unit causes (single: that unit "
                "alone quantized; leave-one-out: all but that unit), as harm scaled to its column's largest; "
                "a green dot marks a signed change whose 95% bootstrap interval excludes zero (gap shift and KL "
                "are never negative, so they get no mark). Bias columns count a change either way as harm.</p>")
    from qfair.report.figures import Figure
    from qfair.report.html import _img

    for p in figs:
        html.append(_img(Figure(p.stem, None, f"Sensitivity heatmap ({p.stem.rsplit('_', 1)[-1]})",
                                "Rows: units in model order. Columns: the scan's headline metrics, then the "
                                "stereotype-gap shift per bias type.", "heatmap", p)))
    uni = scan["sensitivity"].filter((pl.col("mode") == "uniform") & pl.col("group").is_null())
    html.append("<h2 id='uniform'>All units quantized (the spec itself)</h2>")
    html.append(table_html(uni, ["set", "metric", "n", "base", "value", "delta", "ci_low", "ci_high", "p"],
                           sig_col="p"))
    for m in modes:
        html.append(f"<h2 id='top-{m}'>Top units per metric ({m})</h2>")
        html.append(table_html(top_table(scan, 5, m), sig_col="p"))
    units = scan["units"].join(scan["timing"].filter(pl.col("mode") != "uniform").group_by("unit").agg(
        pl.col("seconds").median().alias("scan_seconds")), on="unit", how="left")
    html.append("<h2 id='units'>Units</h2>")
    html.append(table_html(units, ["unit_index", "unit", "kind", "n_members", "n_params", "float_bytes",
                                   "quant_bytes", "scan_seconds"]))
    sec = man["seconds"]
    html.append(f"<p class='meta'>time: load {sec.get('load', 0):.1f} s, base {sec.get('base', 0):.1f} s, median per "
                f"unit {sec.get('per_unit_median', 0):.1f} s, total {sec.get('total', 0):.0f} s on "
                f"{man.get('torch_threads')} torch thread(s)</p>")
    rec_path = Path(scan_dir) / "recommend" / "recommendation.json"
    if rec_path.is_file():
        rec = json.loads(rec_path.read_text())
        html.append("<h2 id='recommend'>Recommendation</h2>")
        b = rec["bytes"]
        html.append(f"<p>Objective <b>{_e(rec['objective'])}</b>, budget {_e(rec['budget']['read_as'])}: keep "
                    f"{len(rec['kept'])} unit(s) in full precision ({_e(', '.join(rec['kept']) or 'none')}).<br>"
                    f"Spec: <code>{_e(rec['spec'])}</code><br>Size: {b['measured'] or b['predicted']} bytes "
                    f"(uniform {b['uniform']}, float {b['float']}).</p>")
        v = rec.get("validation") or {}
        if v.get("headline"):
            html.append("<pre>" + _e("\n".join(v["headline"])) + "</pre>")
        vp = rec_path.parent / "validation.parquet"
        if vp.is_file():
            vt = pl.read_parquet(vp).filter(pl.col("group").is_null() & pl.col("set").is_in(["bias", "all",
                                                                                               "general"]))
            html.append(table_html(vt, ["config", "comparison", "set", "metric", "n", "base", "value", "delta",
                                        "ci_low", "ci_high", "p"], sig_col="p"))
    html.append("<h2 id='settings'>Settings</h2><pre>" + _e(json.dumps(man["settings"], indent=1)) + "</pre>")
    html.append("</body></html>")
    page = out_dir / "report.html"
    page.write_text("".join(html), encoding="utf-8")
    return ReportResult(out_dir, page, figs, None, [])
