"""``qfair debias-eval``: candidate quantizers judged on bias benchmarks they
were not built from, each against uniform GPTQ at (nearly) the same bits.

Work plan:

1. dump the float model and every candidate spec on the evaluation tasks
   (``qfair dump``; an existing complete dump of the same name is reused);
2. ``qfair analyze``'s :func:`qfair.analyze.compare.compare` of the float dump
   with all candidates (KL and bias scores against the float model), and of the
   reference candidate's dump (uniform GPTQ by default) with each other
   candidate: its rows *are* the paired differences candidate − reference,
   with analyze's bootstrap intervals;
3. the KL difference candidate − reference is the paired bootstrap of the two
   per-example KL columns of step 2 (:func:`qfair.stats.paired_bootstrap`);
4. each candidate's bits per weight (the dump manifest's measured size) is
   checked against the reference's: within ±1 % or flagged;
5. a table (``debias.parquet``/``.csv``), ``debias.json``, a Pareto figure
   (bias shift against KL, bits per weight labelled; ``pareto.png``) and
   ``report.html`` embedding both.

Bias shift of a candidate: the mean over the evaluation's headline bias
scores (:data:`HEADLINE_BIAS`) of ``|score(candidate) − score(float)|``;
KL: the token KL(float ‖ candidate), averaged over every evaluation task's
examples.
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qfair.sensitivity.scan import SensitivityError

# (task prefix, summary kind, metric): the bias scores whose shift is the evaluation's bias axis
HEADLINE_BIAS = (("crows_pairs", "example", "pct_stereotype"), ("bbq", "bias", "amb_bias_score"),
                 ("bbq", "bias", "disamb_bias_score"), ("winogender", "bias", "gender_gap"),
                 ("stereoset", "bias", "ss_score"))
DEFAULT_TASKS = "crows_pairs_english,bbq,winogender_all,arc_easy,piqa"
BPW_TOLERANCE = 0.01
FLOAT = "float"


def default_candidates(bits: int = 4, group_size: int = 64, alphas: tuple[float, ...] = (1.0, 10.0),
                       fair_probes: str = "stereoset") -> dict[str, str]:
    """Uniform RTN, uniform GPTQ (the reference), GPTQ on bias-balanced
    calibration texts and fair GPTQ at each alpha (pairs from ``fair_probes``)."""
    g = f"bits={bits},group_size={group_size}"
    out = {"rtn": f"rtn:{g}", "gptq": f"gptq:{g}", "gptq_bias_balanced": f"gptq:{g},calib=bias-balanced"}
    for a in alphas:
        out[f"fair_{a:g}"] = f"gptq:{g},fair={a:g},fair_probes={fair_probes}"
    return out


RANDOM_UNITS = ("layer", "block")


def _block_of(name: str) -> tuple[str, str, str] | None:
    """``model.layers.7.mlp.up_proj`` -> (``model.layers``, ``7``, ``mlp.up_proj``); None outside numbered blocks."""
    import re

    m = re.fullmatch(r"(.*?)\.(\d+)\.(.+)", name)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def random_allocations(spec: str, layer_shapes: dict[str, tuple[int, ...]], seeds: int,
                       unit: str = "layer") -> dict[str, str]:
    """Specs with the widths of ``spec``'s layers shuffled (so every seed stores
    exactly the same bytes), one per seed. ``unit="layer"``: among layers of the
    same shape; ``unit="block"``: whole blocks permuted (layer ``i.X`` takes the
    width of layer ``pi(i).X``), the null for an allocation chosen per block;
    layers outside numbered blocks keep their widths."""
    from qfair.compress.model import resolve_layer_bits
    from qfair.models import QuantSpec, parse_quant_spec
    from qfair.models.backends.weight_quant import layer_bits_rules

    s = parse_quant_spec(spec)
    if s.name not in ("rtn", "gptq") or not s.options.get("layer_bits"):
        raise SensitivityError(f"--allocation {spec!r}: expected an rtn or gptq spec with layer_bits")
    names = list(layer_shapes)
    try:
        own = resolve_layer_bits(names, layer_bits_rules(s.options["layer_bits"]))
    except ValueError as e:
        raise SensitivityError(f"--allocation: {e}") from None
    bits = {n: own.get(n, int(s.options["bits"])) for n in names}
    if unit not in RANDOM_UNITS:
        raise SensitivityError(f"--random-unit {unit!r}: expected one of {', '.join(RANDOM_UNITS)}")
    groups: dict[tuple[int, ...], list[str]] = {}
    for n in names:
        groups.setdefault(tuple(layer_shapes[n]), []).append(n)
    blocks: dict[str, dict[str, str]] = {}  # block index -> {layer role: name}
    for n in names:
        parts = _block_of(n)
        if parts is not None:
            blocks.setdefault(parts[1], {})[f"{parts[0]}|{parts[2]}"] = n
    ids = sorted(blocks, key=int)
    if unit == "block" and (not ids or any(blocks[i].keys() != blocks[ids[0]].keys() or any(
            layer_shapes[blocks[i][r]] != layer_shapes[blocks[ids[0]][r]] for r in blocks[i]) for i in ids)):
        raise SensitivityError("--random-unit block: the model's blocks do not all hold the same layers and "
                               "shapes; use --random-unit layer")
    out = {}
    for seed in range(seeds):
        rng = np.random.default_rng(2000 + seed)
        new = dict(bits)
        if unit == "block":
            for i, k in zip(ids, rng.permutation(len(ids))):
                for role, n in blocks[i].items():
                    new[n] = bits[blocks[ids[int(k)]][role]]
        else:
            for members in groups.values():
                ws = [bits[n] for n in members]
                for n, k in zip(members, rng.permutation(len(members))):
                    new[n] = ws[int(k)]
        common = int(s.options["bits"])
        rules = tuple(f"{n}:{b}" for n, b in new.items() if b != common)
        out[f"random{seed}"] = str(QuantSpec(s.name, {**s.options, "layer_bits": rules}))
    return out


@dataclass
class DebiasEval:
    out: Path
    reference: str
    table: Any
    rows: list[dict[str, Any]] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"qfair debias-eval: {len(self.rows)} candidates against {self.reference} -> {self.out}",
                 f"  {'candidate':<22} {'bpw':>7} {'bias shift':>11} {'KL':>9}  bias vs ref [95% CI]"]
        for r in self.rows:
            flag = "" if r["equal_bits"] else "  (bits differ > 1 %)"
            ci = (f"{r['bias_diff']:+.4g} [{r['bias_diff_lo']:+.4g}, {r['bias_diff_hi']:+.4g}]"
                  if r.get("bias_diff") is not None else "-")
            lines.append(f"  {r['candidate']:<22} {r['bpw']:7.4g} {r['bias_shift']:11.4g} {r['kl']:9.4g}  {ci}{flag}")
        lines.append(f"  written: {self.out / 'debias.parquet'}, {self.out / 'pareto.png'}, "
                     f"{self.out / 'report.html'}")
        return "\n".join(lines)


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"qfair: {msg}", file=sys.stderr, flush=True)


def _dump_one(path: Path, model: str | None, quant: str, tasks: str, limit: int | None, load_kwargs: dict[str, Any],
              progress: bool, batch_size: int) -> None:
    from qfair.dump.run import dump

    done = (path / "manifest.json").is_file() and json.loads((path / "manifest.json").read_text()).get(
        "status") == "complete"
    if done:
        return
    dump(path, model=model, quant=quant, tasks=tasks, limit=limit, progress=progress,
         resume=path.exists(), load_kwargs=load_kwargs, batch_size=batch_size)


def _bias_rows(summary: Any, label: str) -> list[dict[str, Any]]:
    import polars as pl

    out = []
    s = summary.filter((pl.col("model") == label) & pl.col("group").is_null()) if "group" in summary.columns \
        else summary.filter(pl.col("model") == label)
    for prefix, kind, metric in HEADLINE_BIAS:
        part = s.filter(pl.col("task").str.starts_with(prefix) & (pl.col("kind") == kind) & (pl.col("metric") == metric))
        for r in part.iter_rows(named=True):
            if r["diff"] is not None and math.isfinite(r["diff"]):
                out.append(r)
    return out


def _per_example_kl(examples: Any, label: str) -> Any:
    import polars as pl

    return examples.filter(pl.col("model") == label).select(["task", "example_id", "tok_kl_pq"]).sort(
        ["task", "example_id"])


def debias_eval(out: str | os.PathLike, *, model: str | None = None, candidates: dict[str, str] | None = None,
                reference: str = "gptq", allocation: str | None = None, random_seeds: int = 3,
                random_unit: str = "layer",
                tasks: str = DEFAULT_TASKS, limit: int | None = None, bootstrap: int = 2000, seed: int = 0,
                load_kwargs: dict[str, Any] | None = None, batch_size: int = 32, progress: bool = True
                ) -> DebiasEval:
    """Run the evaluation (module doc) and write its files under ``out``."""
    import polars as pl

    from qfair import stats
    from qfair.analyze.compare import compare
    from qfair.dump.reader import open_dump
    from qfair.models import ModelError, parse_quant_spec

    cands = dict(candidates if candidates is not None else default_candidates())
    if allocation is not None:
        cands["allocation"] = allocation
    for name, spec in cands.items():
        if not name or not all(c.isalnum() or c in "_-." for c in name) or name in (FLOAT, "base"):
            raise SensitivityError(f"--candidate {name!r}: expected NAME=SPEC with a name of letters, digits, "
                                   f"'_', '-', '.' (not {FLOAT!r} or 'base')")
        try:
            parse_quant_spec(spec)
        except ModelError as e:
            raise SensitivityError(f"--candidate {name}: {e}") from None
    if reference not in cands:
        raise SensitivityError(f"--reference {reference!r}: expected one of the candidates "
                               f"({', '.join(cands)})")
    if bootstrap < 100:
        raise SensitivityError("--bootstrap: expected at least 100 resamples")
    kw = {k: v for k, v in (load_kwargs or {}).items() if v is not None}
    out_p = Path(out)
    dumps = out_p / "dumps"
    if allocation is not None and random_seeds > 0:
        cands.update(random_allocations(allocation, _layer_shapes(model, kw), random_seeds, random_unit))
    _say(progress, f"debias-eval: {len(cands)} candidates on {tasks}")
    _dump_one(dumps / FLOAT, model, "none", tasks, limit, kw, progress, batch_size)
    for name, spec in cands.items():
        _say(progress, f"debias-eval: dumping {name} ({spec})")
        _dump_one(dumps / name, model, spec, tasks, limit, kw, progress, batch_size)
    names = list(cands)
    # against the float model: KL and bias scores of every candidate
    vs_float = compare(dumps / FLOAT, [dumps / n for n in names], bootstrap=bootstrap, seed=seed, progress=False,
                       uncertainty=False)
    ref_kl = _per_example_kl(vs_float.examples, reference)
    sizes = {n: (open_dump(dumps / n).manifest.get("model") or {}).get("size") or {} for n in names}
    ref_bpw = sizes[reference].get("bits_per_weight")
    rows: list[dict[str, Any]] = []
    paired: list[Any] = []
    for n in names:
        br = _bias_rows(vs_float.summary, n)
        kl = _per_example_kl(vs_float.examples, n)
        row: dict[str, Any] = {"candidate": n, "spec": cands[n], "bpw": sizes[n].get("bits_per_weight"),
                               "stored_bytes": sizes[n].get("stored_bytes"),
                               "bias_shift": float(np.mean([abs(r["diff"]) for r in br])) if br else None,
                               "bias_metrics": len(br), "kl": float(kl["tok_kl_pq"].mean())}
        bpw = row["bpw"]
        row["equal_bits"] = bool(bpw is not None and ref_bpw and abs(bpw / ref_bpw - 1) <= BPW_TOLERANCE)
        row.update({"kl_diff": None, "kl_diff_lo": None, "kl_diff_hi": None, "bias_diff": None,
                    "bias_diff_lo": None, "bias_diff_hi": None})
        if n != reference:
            # paired differences candidate - reference: analyze's own rows with the reference dump as base
            c = compare(dumps / reference, dumps / n, bootstrap=bootstrap, seed=seed, progress=False,
                        uncertainty=False)
            s = c.summary.with_columns(pl.lit(n).alias("candidate"))
            paired.append(s)
            keys = [(r["task"], r["kind"], r["metric"]) for r in br]
            sel = [r for r in _bias_rows(c.summary, c.summary["model"][0]) if (r["task"], r["kind"], r["metric"])
                   in keys]
            if sel:  # the first headline bias score (the table holds all)
                row.update({"bias_diff": sel[0]["diff"], "bias_diff_lo": sel[0]["ci_low"],
                            "bias_diff_hi": sel[0]["ci_high"], "bias_diff_metric": f"{sel[0]['task']}/"
                                                                                   f"{sel[0]['metric']}"})
            j = kl.join(ref_kl, on=["task", "example_id"], suffix="_ref")
            ok = j.filter(pl.col("tok_kl_pq").is_finite() & pl.col("tok_kl_pq_ref").is_finite())
            r = stats.paired_bootstrap([stats.MeanDiff(ok["tok_kl_pq"].to_numpy(), ok["tok_kl_pq_ref"].to_numpy())],
                                       resamples=bootstrap, seed=seed)[0]
            row.update({"kl_diff": float(r.estimate), "kl_diff_lo": float(r.pct_lo), "kl_diff_hi": float(r.pct_hi),
                        "kl_nonfinite": int(j.height - ok.height)})
        rows.append(row)
    table = pl.DataFrame(rows, infer_schema_length=None)
    paired_t = pl.concat(paired, how="diagonal_relaxed") if paired else None
    out_p.mkdir(parents=True, exist_ok=True)
    table.write_parquet(out_p / "debias.parquet")
    table.drop([c for c in table.columns if table[c].dtype == pl.List(pl.Utf8)]).write_csv(out_p / "debias.csv")
    if paired_t is not None:
        paired_t.write_parquet(out_p / "paired.parquet")
    vs_float.summary.write_parquet(out_p / "vs_float.parquet")
    png = out_p / "pareto.png"
    pareto_figure(rows, reference, png)
    _html(out_p / "report.html", rows, reference, png, tasks)
    from qfair.models.quant import json_safe

    (out_p / "debias.json").write_text(json.dumps(json_safe({
        "format": "qfair-debias-eval", "format_version": 1, "model": model, "tasks": tasks, "limit": limit,
        "reference": reference, "candidates": cands, "bootstrap": bootstrap, "seed": seed,
        "bpw_tolerance": BPW_TOLERANCE, "headline_bias": [list(h) for h in HEADLINE_BIAS], "rows": rows}),
        indent=1) + "\n")
    return DebiasEval(out_p, reference, table, rows)


def _layer_shapes(model: str | None, kw: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    from qfair.compress.model import target_linears
    from qfair.models import load_model

    lm = load_model(model, quant="none", progress=False, **{**kw, "device": "cpu"})
    return {n: tuple(m.weight.shape) for n, m in target_linears(lm.model).items()}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((a <= x and b <= y) and (a < x or b < y) for j, (a, b) in enumerate(points) if j != i):
            front.append(i)
    return front


def pareto_figure(rows: list[dict[str, Any]], reference: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["bias_shift"] is not None]
    fig, ax = plt.subplots(figsize=(7, 5))
    xy = [(r["kl"], r["bias_shift"]) for r in pts]
    front = set(pareto_front(xy))
    for i, r in enumerate(pts):
        color = "tab:red" if r["candidate"] == reference else ("tab:blue" if r["equal_bits"] else "tab:gray")
        ax.scatter(r["kl"], r["bias_shift"], c=color, marker="o" if i in front else "x", zorder=3)
        ax.annotate(f"{r['candidate']} ({r['bpw']:.3g} bpw)" if r["bpw"] is not None else r["candidate"],
                    (r["kl"], r["bias_shift"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    fr = sorted(xy[i] for i in front)
    if len(fr) > 1:
        ax.plot([p[0] for p in fr], [p[1] for p in fr], "k--", lw=0.8, zorder=2)
    ax.set_xlabel("KL(float || candidate), nats per token")
    ax.set_ylabel("bias shift: mean |score - float score| over held-out bias scores")
    ax.set_title(f"candidates (o: Pareto front; red: {reference}; gray: bits differ > 1 %)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _html(path: Path, rows: list[dict[str, Any]], reference: str, png: Path, tasks: str) -> None:
    import base64
    import html

    def f(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))

    cols = ["candidate", "bpw", "equal_bits", "bias_shift", "kl", "bias_diff", "bias_diff_lo", "bias_diff_hi",
            "kl_diff", "kl_diff_lo", "kl_diff_hi", "spec"]
    body = "".join("<tr>" + "".join(f"<td>{f(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    img = base64.b64encode(png.read_bytes()).decode()
    path.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>qfair debias-eval</title>
<style>body{{font-family:sans-serif}} td,th{{border:1px solid #ccc;padding:2px 6px;font-size:12px}}
table{{border-collapse:collapse}}</style></head><body>
<h1>Candidates against {html.escape(reference)}</h1>
<p>Evaluation tasks: {html.escape(tasks)}. Differences are candidate − {html.escape(reference)}, paired per example,
with 95 % bootstrap intervals; equal_bits: bits per weight within ±1 % of {html.escape(reference)}.</p>
<table><tr>{''.join(f'<th>{c}</th>' for c in cols)}</tr>{body}</table>
<h2>Bias shift against KL</h2><img src="data:image/png;base64,{img}" alt="Pareto figure">
</body></html>
""", encoding="utf-8")
