"""``qfair recommend``: from a scan, the units to keep in full precision that
minimise an objective under a memory budget, written as a quantization spec
``qfair dump --quant`` accepts, and validated on the held-out probes.

Choice. Each unit has a *gain* (how much of the objective keeping it in full
precision is expected to save: its own harm in a single-unit scan, or, from a
leave-one-out scan, the harm of the uniform model minus the harm with that
unit kept) and a *cost* (its float bytes minus its quantized bytes). The
chosen set maximises the summed gain with the summed cost within the budget,
exactly (0/1 knapsack over the Pareto frontier of (cost, gain)). Summing the
gains assumes the units' effects add up; the held-out validation measures the
actual mixed model, so a failure of that assumption shows there.

Budget: a size in bytes (``50MB``, ``48MiB``, ``52000000``) of the whole
model's saved state, or ``Nbits`` (or ``Nbpw``): N bits per parameter of the scanned units
on average, plus everything the spec leaves unquantized. The recommended spec
is loaded and its size measured; it never exceeds the budget.

Validation (``probe_split="heldout"``, the default): on the probe examples the
scan never saw, the recommended model is compared with (a) uniform
quantization and (b) the same bytes kept in randomly chosen units (several
seeds): every metric against the base with bootstrap intervals, and the
paired differences recommended - uniform and recommended - random (per
example, averaged over the seeds), with intervals over examples.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qfair.sensitivity.scan import SensitivityError, read_scan

# objective -> (set, metric) of the scan table
OBJECTIVES: dict[str, tuple[str, str]] = {
    "bias": ("bias", "gap_shift"),
    "pct_stereotype": ("bias", "pct_stereotype"),
    "likelihood_diff": ("bias", "likelihood_diff"),
    "stereo_gap": ("bias", "stereo_gap"),
    "kl": ("all", "kl"),
    "acc": ("general", "acc"),
    # generation probes (qfair sensitivity --gen-probes)
    "gen_bias": ("gen", "lexicon_gap_shift"),
    "gen_kl": ("gen", "gen_kl"),
}
PROBE_SPLITS = ("heldout", "scan", "none")
_SIZE_UNITS = {"": 1, "b": 1, "byte": 1, "bytes": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9,
               "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30}


def harm(metric: str, delta: float) -> float:
    """How harmful a change is (larger = worse): the change itself for KL and gap
    shift, its size for the CrowS-Pairs metrics, the loss for accuracy."""
    if metric == "acc":
        return -delta
    if metric in ("pct_stereotype", "likelihood_diff", "stereo_gap"):
        return abs(delta)
    return delta


def parse_budget(text: str, *, unit_params: int, outside_bytes: int) -> tuple[int, str]:
    """(budget in bytes, how it was read). ``outside_bytes``: the bytes of
    everything that is not a scanned unit (embeddings, norms, skipped modules)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m:
        raise SensitivityError(f"bad --budget {text!r}; expected bytes (e.g. 60MB, 57MiB, 60000000) "
                               "or bits per parameter (e.g. 4.5bits, 4.25bpw)")
    value, unit = float(m.group(1)), m.group(2).lower()
    scaled = value * (unit_params / 8 if unit in ("bit", "bits", "bpw") else _SIZE_UNITS.get(unit, 1))
    if not math.isfinite(scaled) or not math.isfinite(value) or scaled > 2.0**62:
        raise SensitivityError(f"bad --budget {text!r}; expected a finite size: bytes (e.g. 60MB) or bits per "
                               "parameter (e.g. 4.5bits, 4.25bpw); this one is too large for a model size")
    if unit in ("bit", "bits", "bpw"):
        b = outside_bytes + int(math.floor(value * unit_params / 8))
        return b, f"{value:g} bits per scanned parameter = {b} bytes"
    if unit not in _SIZE_UNITS:
        raise SensitivityError(f"bad --budget unit {m.group(2)!r}; expected B, kB, MB, GB, KiB, MiB, GiB, bits "
                               "or bpw")
    b = int(math.floor(value * _SIZE_UNITS[unit]))
    return b, f"{b} bytes"


def knapsack(costs: list[int], gains: list[float], capacity: int, max_frontier: int = 200_000
             ) -> tuple[list[int], bool]:
    """Indices maximising the summed gain with summed cost <= capacity (ties: the
    cheaper set), and whether the answer is exact (False: the frontier grew past
    ``max_frontier`` and the rest was filled greedily by gain per byte)."""
    items = [i for i in range(len(costs)) if gains[i] > 0 and costs[i] <= capacity]
    free = [i for i in items if costs[i] <= 0]
    items = [i for i in items if costs[i] > 0]
    frontier: list[tuple[int, float, tuple[int, ...]]] = [(0, 0.0, ())]
    exact = True
    for n, i in enumerate(items):
        grown = [(c + costs[i], g + gains[i], ch + (i,)) for c, g, ch in frontier if c + costs[i] <= capacity]
        merged = sorted(frontier + grown, key=lambda x: (x[0], -x[1]))
        frontier = []
        best = -math.inf
        for c, g, ch in merged:
            if g > best:
                frontier.append((c, g, ch))
                best = g
        if len(frontier) > max_frontier:
            exact = False
            c, g, ch = max(frontier, key=lambda x: (x[1], -x[0]))
            rest = sorted(items[n + 1:], key=lambda j: -gains[j] / costs[j])
            chosen = list(ch)
            for j in rest:
                if c + costs[j] <= capacity:
                    chosen.append(j)
                    c += costs[j]
            return sorted(free + chosen), exact
    c, g, ch = max(frontier, key=lambda x: (x[1], -x[0]))
    return sorted(free + list(ch)), exact


def keep_spec(quant: str, kept: list[str], default_skips: list[str]) -> str:
    """The spec ``quant`` with the units ``kept`` in full precision, through the
    backend's own module-list option (``skip_modules`` / ``ignore``). A given list
    replaces the backend's default, so that default (e.g. ``lm_head``) is kept."""
    from qfair.models import QuantSpec, parse_quant_spec
    from qfair.models.backends import spec_backend

    spec = parse_quant_spec(quant)
    if not kept:
        return str(spec)
    d = spec_backend(spec.name).spec_def(spec.name)
    key = next((k for k in ("skip_modules", "ignore") if k in d.options), None)
    if key is None:
        raise SensitivityError(f"quantization spec {spec.name!r} has no option to keep modules in full precision")
    current = list(spec.options.get(key) or default_skips)
    names = current + [k for k in kept if k not in current]
    out = QuantSpec(spec.name, {**spec.options, key: tuple(names)})
    parse_quant_spec(str(out))  # the written spec must parse back
    return str(out)


@dataclass
class Recommendation:
    out: Path
    spec: str
    kept: list[str]
    objective: str
    budget_bytes: int
    budget_text: str
    predicted_bytes: int
    measured_bytes: int | None
    uniform_bytes: int
    float_bytes: int
    exact: bool
    validation: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        lines = [f"qfair recommend: objective {self.objective}, budget {self.budget_text}",
                 f"  keep in full precision ({len(self.kept)}): {', '.join(self.kept) or '(none)'}",
                 f"  spec: {self.spec}",
                 f"  size: {self.measured_bytes if self.measured_bytes is not None else self.predicted_bytes} bytes "
                 f"({'measured on the loaded spec' if self.measured_bytes is not None else 'predicted'}); "
                 f"uniform {self.uniform_bytes}, float {self.float_bytes}"]
        if not self.exact:
            lines.append("  note: the choice was completed greedily (frontier too large); it may not be optimal")
        for line in self.validation.get("headline", []):
            lines.append("  " + line)
        lines.append(f"  written to {self.out}")
        return "\n".join(lines)


def unit_gains(scan: dict[str, Any], objective: str, source: str = "single") -> dict[str, float]:
    """Gain of keeping each unit in full precision, from the scan table."""
    import polars as pl

    set_name, metric = OBJECTIVES[objective]
    t = scan["sensitivity"].filter(pl.col("group").is_null() & (pl.col("set") == set_name)
                                   & (pl.col("metric") == metric))
    modes = set(t["mode"].to_list())
    if source not in modes:
        raise SensitivityError(f"the scan in {scan['path']} has no {source!r} rows (it ran "
                               f"{', '.join(sorted(m for m in modes if m != 'uniform')) or 'nothing'}); "
                               f"rerun qfair sensitivity with --mode {source}")
    per = {r["unit"]: r["delta"] for r in t.filter(pl.col("mode") == source).iter_rows(named=True)}
    if source == "single":
        return {u: harm(metric, d) for u, d in per.items()}
    uni = t.filter(pl.col("mode") == "uniform")["delta"].to_list()[0]
    return {u: harm(metric, uni) - harm(metric, d) for u, d in per.items()}


def recommend(scan_dir: str | os.PathLike, *, budget: str, objective: str = "bias", source: str = "single",
              probe_split: str = "heldout", seeds: int = 5, out: str | os.PathLike | None = None,
              resamples: int = 10_000, progress: bool = True, loaded: tuple[Any, Any] | None = None,
              keep: str = "none") -> Recommendation:
    """Choose, write and (unless ``probe_split="none"``) validate a recommendation.

    ``keep``: the spec of the kept units, ``none`` (full precision, through the
    backend's skip list) or a higher-bit spec (written as a ``mixed`` spec; the
    gains are still the scan's, i.e. the kept units' own harm under the
    higher-bit spec is taken as negligible, which the validation measures)."""
    if objective not in OBJECTIVES:
        raise SensitivityError(f"unknown --objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
    if probe_split not in PROBE_SPLITS:
        raise SensitivityError(f"unknown --probe-split {probe_split!r}; expected one of {', '.join(PROBE_SPLITS)}")
    if seeds < 1:
        raise SensitivityError("--seeds must be at least 1")
    out_p = check_recommend_out(scan_dir, out)  # before any work
    scan = read_scan(scan_dir)
    man = scan["manifest"]
    units = scan["units"]
    names = units["unit"].to_list()
    keep_spec_ = _parse_keep(keep)
    high_lm = None
    if keep_spec_ is None:
        cost = {r["unit"]: int(r["float_bytes"]) - int(r["quant_bytes"]) for r in units.iter_rows(named=True)}
    else:
        high_lm, high_bytes = _high_unit_bytes(man, units, keep_spec_, progress)
        cost = {r["unit"]: high_bytes[r["unit"]] - int(r["quant_bytes"]) for r in units.iter_rows(named=True)}
    nbytes = man["bytes"]
    outside = int(nbytes["quantized_model"]) - int(nbytes["units_quantized"])
    budget_bytes, budget_text = parse_budget(budget, unit_params=int(units["n_params"].sum()), outside_bytes=outside)
    uniform_bytes = int(nbytes["quantized_model"])
    if budget_bytes < uniform_bytes:
        raise SensitivityError(f"--budget {budget} ({budget_bytes} bytes) is below the uniformly quantized "
                               f"model's {uniform_bytes} bytes; nothing fits")
    gains = unit_gains(scan, objective, source)
    idx, exact = knapsack([cost[n] for n in names], [gains.get(n, 0.0) for n in names],
                          budget_bytes - uniform_bytes)
    kept = [names[i] for i in idx]
    quant = man["settings"]["quant"]
    default_skips = list((man["models"]["quantized"].get("quantization") or {}).get("modules_not_converted") or [])
    spec = keep_spec(quant, kept, default_skips) if keep_spec_ is None else mixed_spec(quant, keep_spec_, kept)
    predicted = uniform_bytes + sum(cost[k] for k in kept)
    rec = Recommendation(out_p, spec, kept, objective, budget_bytes, budget_text, predicted, None, uniform_bytes,
                         int(nbytes["float_model"]), exact)
    if probe_split != "none":
        rec.measured_bytes, rec.validation, table = validate(scan, rec, side=probe_split, seeds=seeds,
                                                             resamples=resamples, progress=progress,
                                                             loaded=loaded, costs=cost, high=high_lm)
        if rec.measured_bytes != predicted:
            raise SensitivityError(f"the recommended spec measures {rec.measured_bytes} bytes, not the predicted "
                                   f"{predicted}: the units' sizes do not add up for this backend")
        if rec.measured_bytes > budget_bytes:  # pragma: no cover - implied by the check above
            raise SensitivityError("the recommended spec exceeds the budget")
    else:
        table = None
    out_p.mkdir(parents=True, exist_ok=True)
    if table is not None:
        table.write_parquet(out_p / "validation.parquet")
    from qfair.models.quant import json_safe

    record = {"format": "qfair-recommendation", "format_version": 1, "scan": str(Path(scan_dir)),
              "objective": objective, "objective_metric": list(OBJECTIVES[objective]), "gain_source": source,
              "keep": "none" if keep_spec_ is None else str(keep_spec_),
              "budget": {"given": budget, "bytes": budget_bytes, "read_as": budget_text},
              "spec": spec, "kept": kept, "exact": exact,
              "gains": {n: gains.get(n) for n in names}, "costs": cost,
              "bytes": {"predicted": predicted, "measured": rec.measured_bytes, "uniform": uniform_bytes,
                        "float": rec.float_bytes},
              "probe_split": probe_split, "validation": rec.validation}
    (out_p / "recommendation.json").write_text(json.dumps(json_safe(record), indent=1) + "\n")
    (out_p / "spec.txt").write_text(spec + "\n")
    return rec


def check_recommend_out(scan_dir: str | os.PathLike, out: str | os.PathLike | None) -> Path:
    """The recommendation's directory (default SCAN_DIR/recommend), checked before
    any work: not a file, not the scan directory itself nor a directory holding it."""
    from qfair.fsutil import PathError, check_not_input

    out_p = Path(out) if out is not None else Path(scan_dir) / "recommend"
    try:
        o = check_not_input(out_p, {"SCAN_DIR": scan_dir})
    except PathError as e:
        raise SensitivityError(str(e)) from None
    if o.exists() and not o.is_dir():
        raise SensitivityError(f"--out {out_p}: exists and is not a directory")
    for p in (o / "recommendation.json", o / "spec.txt", o / "validation.parquet"):
        if p.is_dir():
            raise SensitivityError(f"{p}: is a directory; the recommendation writes a file there")
    return out_p


def random_sets(names: list[str], costs: dict[str, int], target: int, seeds: int, exclude: set[str] | None = None
                ) -> list[list[str]]:
    """For each seed, units taken in a random order while the summed cost stays
    within ``target`` (the recommended set's extra bytes)."""
    out = []
    for s in range(seeds):
        rng = np.random.default_rng(1000 + s)
        chosen, total = [], 0
        for i in rng.permutation(len(names)):
            n = names[int(i)]
            if exclude and n in exclude:
                continue
            if total + costs[n] <= target:
                chosen.append(n)
                total += costs[n]
        out.append(sorted(chosen, key=names.index))
    return out


def _parse_keep(keep: str | None) -> Any:
    from qfair.models import ModelError, parse_quant_spec

    try:
        s = parse_quant_spec(keep or "none")
    except ModelError as e:
        raise SensitivityError(f"--keep: {e}") from None
    if s.name == "none":
        return None
    if s.name in ("mixed", "prequantized"):
        raise SensitivityError(f"--keep {keep!r}: expected none or a plain quantization spec")
    return s


def mixed_spec(quant: str, high: Any, kept: list[str]) -> str:
    """``mixed:base=QUANT,high=HIGH,modules=KEPT`` (inner options joined by ';')."""
    from qfair.models import parse_quant_spec

    base = str(parse_quant_spec(quant)).replace(",", ";")
    if not kept:
        return str(parse_quant_spec(quant))
    text = f"mixed:base={base},high={str(high).replace(',', ';')},modules={'+'.join(kept)}"
    return str(parse_quant_spec(text))


def _high_unit_bytes(man: dict[str, Any], units: Any, high: Any, progress: bool) -> tuple[Any, dict[str, int]]:
    """The higher-bit copy (loaded once, before any forward) and each unit's bytes in it."""
    from qfair.models import load_model
    from qfair.sensitivity.units import members_bytes

    st = man["settings"]
    load_kw = {k: v for k, v in (st.get("load") or {}).items() if v not in (None, "None")}
    lm = load_model(st["model"], quant=high, progress=progress, **load_kw)
    packed = lm.extra.get("packed_bytes")
    out = {r["unit"]: members_bytes(lm.model, r["members"], packed) for r in units.iter_rows(named=True)}
    return lm, out


def validate(scan: dict[str, Any], rec: Recommendation, *, side: str, seeds: int, resamples: int,
             progress: bool, loaded: tuple[Any, Any] | None, costs: dict[str, int], high: Any = None
             ) -> tuple[int, dict[str, Any], Any]:
    """Load the recommended spec (its measured size), then score base, uniform,
    recommended and random configurations on one side of the split."""

    from qfair.models import load_model
    from qfair.sensitivity.measure import score_probes
    from qfair.sensitivity.probes import Split, build_probes, load_tasks
    from qfair.sensitivity.scan import _quiet_torch, load_pair
    from qfair.sensitivity.units import UnitSwapper, define_units, model_bytes

    man = scan["manifest"]
    st = man["settings"]
    load_kw = {k: v for k, v in (st.get("load") or {}).items() if v not in (None, "None")}
    tasks = load_tasks(st["tasks"], {k: Path(v) for k, v in (st.get("data_files") or {}).items()}, st.get("limit"),
                       st.get("data_dir"), require_bias=False)  # a scan built on generation probes may have none
    t0 = time.perf_counter()
    base_lm, quant_lm = loaded if loaded is not None else load_pair(st["model"], st["quant"], load_kw, progress)
    packed = quant_lm.extra.get("packed_bytes")
    units = define_units(base_lm.model, quant_lm.model, st["unit"], packed)
    names = [u.name for u in units]
    if names != scan["units"]["unit"].to_list():
        raise SensitivityError("the model's units differ from the scan's (another model or spec?)")
    rec_lm = load_model(st["model"], quant=rec.spec, progress=progress, **load_kw)
    measured = model_bytes(rec_lm.model, rec_lm.extra.get("packed_bytes"))
    probes = build_probes(tasks, base_lm.tokenizer, Split.parse(st["split"]), side, require_bias=False)
    sw = UnitSwapper(base_lm.model, quant_lm.model, units, extra={"high": high.model} if high is not None else None)
    keep_source = "float" if high is None else "high"
    host, tok, dev = base_lm.model, base_lm.tokenizer, getattr(base_lm, "device", None)
    extra_cost = sum(costs[k] for k in rec.kept)
    rand = random_sets(names, costs, extra_cost, seeds, exclude=None)
    configs: dict[str, list[str]] = {"uniform": [], "recommended": list(rec.kept)}
    for s, r in enumerate(rand):
        configs[f"random{s}"] = r
    scored: dict[str, Any] = {}
    say = (lambda m: print(f"qfair: {m}", file=sys.stderr, flush=True)) if progress else (lambda m: None)
    try:
        with _quiet_torch():
            base = score_probes(host, tok, probes, keep_rows=True, device=dev)
            for cname, keep in configs.items():
                sw.assign({n: (keep_source if n in keep else "quant") for n in names})
                scored[cname] = score_probes(host, tok, probes, base=base, device=dev)
                say(f"validation: {cname} scored ({scored[cname].seconds:.0f} s)")
            sw.restore()
            loaded_rec = score_probes(rec_lm.model, rec_lm.tokenizer, probes, base=base,
                                      device=getattr(rec_lm, "device", None))
    finally:
        sw.restore()
    # the recommended spec loaded from disk against the same configuration built by swapping
    diffs = [abs(a - b) for x, y in zip(loaded_rec.ll, scored["recommended"].ll) for a, b in zip(x, y)]
    spec_check = {"max_abs_loglik_diff": float(max(diffs)) if diffs else 0.0,
                  "bitwise_equal": bool(all(d == 0.0 for d in diffs))}
    table = _validation_rows(probes, base, scored, loaded_rec, configs, resamples)
    set_name, metric = OBJECTIVES[rec.objective]
    headline = _headline(table, set_name, metric, side)
    if metric != "kl":
        headline += _headline(table, "all", "kl", side)
    info = {"side": side, "n_examples": len(probes), "seeds": seeds, "random_sets": rand,
            "configs": {k: v for k, v in configs.items()}, "spec_check": spec_check,
            "seconds": time.perf_counter() - t0, "headline": headline,
            "note": "in-sample: the scan side was used" if side == "scan" else "held-out side of the scan's split"}
    return measured, info, table


def _validation_rows(probes: Any, base: Any, scored: dict[str, Any], loaded_rec: Any,
                     configs: dict[str, list[str]], resamples: int) -> Any:
    """The validation table: every configuration against the base, and the
    recommended one paired against uniform and the random configurations' mean."""
    import polars as pl

    from qfair.sensitivity.measure import PAIRED_METRICS, compare, paired_rows

    rows: list[dict[str, Any]] = []
    # "recommended_spec": the spec loaded from disk (for calibrated backends a new calibration run, whose
    # other layers may differ from the scan's); "recommended": the same units kept, built by swapping
    for cname, s in [*scored.items(), ("recommended_spec", loaded_rec)]:
        for r in compare(probes, base, s, resamples=resamples):
            rows.append({"config": cname, "comparison": "vs_base", **r})
    for r in paired_rows(probes, loaded_rec.values, scored["uniform"].values, resamples=resamples):
        rows.append({"config": "recommended_spec", "comparison": "vs_uniform", **r})
    # paired differences of the recommended model against uniform and random
    rand_names = [c for c in configs if c.startswith("random")]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN columns: metrics of the other role
        rand_mean = {m: np.nanmean(np.stack([scored[c].values[m] for c in rand_names]), axis=0)
                     for m in PAIRED_METRICS}
    for other, xv in (("uniform", scored["uniform"].values), ("random", rand_mean)):
        for r in paired_rows(probes, scored["recommended"].values, xv, resamples=resamples):
            rows.append({"config": "recommended", "comparison": f"vs_{other}", **r})
    table = pl.DataFrame(rows, schema={"config": pl.Utf8, "comparison": pl.Utf8, "set": pl.Utf8, "group": pl.Utf8,
                                       "metric": pl.Utf8, "n": pl.Int64, "base": pl.Float64, "value": pl.Float64,
                                       "delta": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
                                       "p": pl.Float64})
    return table


def _headline(table: Any, set_name: str, metric: str, side: str) -> list[str]:
    import polars as pl

    def row(config: str, comparison: str) -> dict[str, Any] | None:
        t = table.filter((pl.col("config") == config) & (pl.col("comparison") == comparison)
                         & (pl.col("set") == set_name) & (pl.col("metric") == metric) & pl.col("group").is_null())
        return t.row(0, named=True) if t.height else None

    def ci(r: dict[str, Any] | None) -> str:
        if r is None:
            return "n/a"
        return f"{r['delta']:+.4g} [{r['ci_low']:+.4g}, {r['ci_high']:+.4g}]"

    out = [f"validation on the {side} side ({set_name}/{metric}, change against the base, 95% CI):"]
    for c in ("uniform", "recommended"):
        out.append(f"  {c:<12} {ci(row(c, 'vs_base'))}")
    rnd = [r for r in table.filter((pl.col("comparison") == "vs_base") & pl.col("config").str.starts_with("random")
                                   & (pl.col("set") == set_name) & (pl.col("metric") == metric)
                                   & pl.col("group").is_null()).iter_rows(named=True)]
    if rnd:
        out.append(f"  random ({len(rnd)} seeds) deltas: " + ", ".join(f"{r['delta']:+.4g}" for r in rnd))
    out.append(f"  recommended - uniform: {ci(row('recommended', 'vs_uniform'))}; "
               f"recommended - random: {ci(row('recommended', 'vs_random'))}")
    return out
