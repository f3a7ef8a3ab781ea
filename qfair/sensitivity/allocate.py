"""Bias-aware bit allocation: one bit width per unit (a linear layer, or every
layer of a block) under a size budget, from a scan with candidate widths
(``qfair sensitivity --unit linear --bits 3,4,8``, or ``--unit block``),
written as one ``rtn``/``gptq`` spec whose ``layer_bits`` names every layer
of a unit off the common width.

Cost of a choice. The scan measured, for every layer ``l`` and candidate
width ``b``, the model quantized at the reference width ``r`` (the spec's
``bits``) everywhere except ``l``, which is at ``b``. With ``J = w * harm(bias
gap shift) + KL`` (both against the float model, ``w`` = ``--bias-weight``),
the marginal cost of putting ``l`` at ``b`` is ``m(l, b) = J(l at b) -
J(uniform at r)`` (0 at ``r``), and an allocation is predicted to cost
``J(uniform) + sum_l m(l, b_l)``. Adding the marginal costs assumes the layers'
effects add up around the uniform model; the evaluation (``qfair
debias-eval``) measures the actual model.

Choice. Minimise ``sum_l m(l, b_l)`` subject to ``sum_l bytes(l, b_l) <=
budget - bytes outside the layers``: a multiple-choice knapsack, solved
exactly by dynamic programming over the budget cut into at most
``max_cells`` equal cells; cells of the byte differences' greatest common
divisor when that is few enough (layers whose widths differ by whole steps are
then counted exactly, and a budget of exactly the uniform model's bytes is
reachable); otherwise each choice's bytes above the layer's smallest
width are rounded *up* to whole cells, so the answer never exceeds the budget
(at worst it leaves up to one cell per layer unused).
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qfair.sensitivity.recommend import harm, parse_budget
from qfair.sensitivity.scan import SensitivityError, parse_widths, read_scan

FORMAT = "qfair-allocation"
BIAS = ("bias", "gap_shift")
KL = ("all", "kl")
#: --bias-source -> the (bias, KL) rows of the objective: the pair probes' gap shift and token KL, or the
#: generation probes' lexicon gap shift and KL along the float model's texts (qfair.generation.probe_objective)
BIAS_SOURCES = {"pairs": (BIAS, KL), "generation": (("gen", "lexicon_gap_shift"), ("gen", "gen_kl"))}


def multiple_choice_knapsack(weights: list[list[int]], values: list[list[float]], capacity: int,
                             max_cells: int = 20_000) -> tuple[list[int], int]:
    """One choice per group minimising the summed value with summed weight <=
    ``capacity`` (weights >= 0 integers). Returns (choice index per group, cell
    size): exact with cells of 1 when capacity <= ``max_cells``, or of the
    weights' greatest common divisor ``g`` when capacity <= ``g * max_cells``
    (bytes of layers at several widths share large divisors, so a budget of
    exactly the uniform model's bytes stays reachable); otherwise exact for the
    weights rounded up to cells of ``ceil(capacity / max_cells)``. Ties: the lighter total, then the earlier
    choice. Raises ValueError when nothing fits."""
    if capacity < 0:
        raise ValueError("nothing fits")
    g = math.gcd(*[int(x) for w in weights for x in w]) or 1
    if capacity <= max_cells:
        cell = 1
    elif capacity // g <= max_cells:
        cell = g  # exact: every weight is a whole number of cells
    else:
        cell = math.ceil(capacity / max_cells)
    n_cells = capacity // cell
    inf = math.inf
    best = np.zeros(n_cells + 1)  # best[c]: least value with total cells <= c (groups so far)
    picks = []
    for w, v in zip(weights, values):
        cw = [math.ceil(x / cell) for x in w]
        new = np.full(n_cells + 1, inf)
        pick = np.full(n_cells + 1, -1, dtype=np.int16)
        for k, (c, val) in enumerate(zip(cw, v)):
            if c > n_cells:
                continue
            cand = np.full(n_cells + 1, inf)
            cand[c:] = best[: n_cells + 1 - c] + val
            better = cand < new
            new = np.where(better, cand, new)
            pick = np.where(better, k, pick)
        best = new
        picks.append(pick)
        if not np.isfinite(best[-1]):
            raise ValueError("nothing fits")
    # the least value; among equals the fewest cells
    c = int(np.flatnonzero(best == best.min())[0])
    choice = [0] * len(weights)
    for g in range(len(weights) - 1, -1, -1):
        k = int(picks[g][c])
        choice[g] = k
        c -= math.ceil(weights[g][k] / cell)
    return choice, cell


@dataclass
class Allocation:
    out: Path
    spec: str
    bits: dict[str, int]
    budget_bytes: int
    budget_text: str
    predicted_bytes: int
    measured_bytes: int | None
    predicted_cost: float
    uniform_cost: float
    bpw: float
    cell: int
    bias_source: str = "pairs"

    def text(self) -> str:
        hist = Counter(self.bits.values())
        lines = [f"qfair recommend (bit allocation): budget {self.budget_text}",
                 "  widths: " + ", ".join(f"{n} units at {b} bits" for b, n in sorted(hist.items())),
                 f"  spec: {self.spec}",
                 f"  size: predicted {self.predicted_bytes} bytes ({self.bpw:.4g} bits per layer weight)"
                 + (f", measured {self.measured_bytes} on the loaded spec" if self.measured_bytes is not None
                    else ""),
                 f"  objective (bias weight x {BIAS_SOURCES[self.bias_source][0][1]} + "
                 f"{BIAS_SOURCES[self.bias_source][1][1]}, predicted): {self.predicted_cost:+.4g} "
                 f"(uniform at the reference width: {self.uniform_cost:+.4g})",
                 f"  written to {self.out}"]
        return "\n".join(lines)


def _objective(rows: Any, bias_weight: float, bias_source: str = "pairs") -> dict[tuple[str, int], float]:
    """J per (unit, bits) from the scan's widths table."""
    import polars as pl

    out: dict[tuple[str, int], float] = {}
    t = rows.filter(pl.col("group").is_null())
    bias, kl = BIAS_SOURCES[bias_source]
    for (set_name, metric), w in ((bias, bias_weight), (kl, 1.0)):
        part = t.filter((pl.col("set") == set_name) & (pl.col("metric") == metric))
        if part.height == 0:
            if (set_name, metric) == bias and bias_weight == 0:
                continue
            what = {"bias": "CrowS-Pairs or StereoSet probes", "gen": "generation probes: --gen-probes"}.get(
                set_name, "probes")
            raise SensitivityError(f"the scan has no {set_name}/{metric} rows (scanned without {what}?)")
        for r in part.iter_rows(named=True):
            k = (r["unit"], int(r["bits"]))
            out[k] = out.get(k, 0.0) + w * harm(metric, float(r["delta"]))
    return out


def spec_with_widths(quant: str, bits: dict[str, int]) -> str:
    """The scan's spec with ``bits`` = the most common width and ``layer_bits``
    naming every other layer exactly."""
    from qfair.models import QuantSpec, parse_quant_spec

    spec = parse_quant_spec(quant)
    counts = Counter(bits.values())
    common = max(counts, key=lambda b: (counts[b], b))
    rules = tuple(f"{n}:{b}" for n, b in bits.items() if b != common)
    out = QuantSpec(spec.name, {**spec.options, "bits": common, "layer_bits": rules})
    text = str(out)
    if parse_quant_spec(text) != out:  # pragma: no cover - the written spec must parse back
        raise SensitivityError("the allocation's spec does not parse back")
    return text


def allocate(scan_dir: str | os.PathLike, *, budget: str, bias_weight: float = 1.0, bits: Any = None,
             out: str | os.PathLike | None = None, measure: bool = True, progress: bool = True,
             max_cells: int = 20_000, bias_source: str = "pairs") -> Allocation:
    """Choose a width per layer, write ``allocation.json``, ``allocation.parquet``
    and ``spec.txt`` (to ``out``, default SCAN_DIR/recommend), and with
    ``measure`` load the spec and measure its size (before anything is written)."""
    import polars as pl

    if not (isinstance(bias_weight, (int, float)) and math.isfinite(bias_weight) and bias_weight >= 0):
        raise SensitivityError(f"--bias-weight {bias_weight!r}: expected a finite number >= 0")
    if bias_source not in BIAS_SOURCES:
        raise SensitivityError(f"--bias-source {bias_source!r}: expected one of {', '.join(BIAS_SOURCES)}")
    scan = read_scan(scan_dir)
    if "widths" not in scan:
        raise SensitivityError(f"the scan in {scan_dir} has no candidate widths; rerun qfair sensitivity with "
                               "--unit linear --bits 3,4,8 (for example)")
    man = scan["manifest"]
    scanned = tuple(man["settings"]["widths"])
    cand = parse_widths(bits) if bits is not None else scanned
    missing = sorted(set(cand) - set(scanned))
    if missing:
        raise SensitivityError(f"--bits {','.join(map(str, cand))}: the scan has widths "
                               f"{','.join(map(str, scanned))} only (not {','.join(map(str, missing))})")
    wu = scan["width_units"].filter(pl.col("bits").is_in(list(cand)))
    names = scan["units"]["unit"].to_list()
    nbytes = {(r["unit"], int(r["bits"])): int(r["bytes"]) for r in wu.iter_rows(named=True)}
    params = int(scan["units"]["n_params"].sum())
    J = _objective(scan["widths"], float(bias_weight), bias_source)
    ref = int(man["settings"]["reference_bits"])
    uni = J[(names[0], ref)]  # every unit's reference row is the uniform model
    outside = int(man["bytes"]["quantized_model"]) - int(man["bytes"]["units_quantized"])
    budget_bytes, budget_text = parse_budget(budget, unit_params=params, outside_bytes=outside)
    floor_bytes = outside + sum(min(nbytes[(n, b)] for b in cand) for n in names)
    if budget_bytes < floor_bytes:
        raise SensitivityError(f"--budget {budget} ({budget_bytes} bytes) is below what uniform quantization at "
                               f"the smallest candidate width ({min(cand)} bits) needs: {floor_bytes} bytes")
    missing_rows = [(n, b) for n in names for b in cand if (n, b) not in J]
    if missing_rows:
        raise SensitivityError(f"the scan has no width rows for {missing_rows[0][0]} at {missing_rows[0][1]} bits "
                               "(scanned with --only?)")
    base = {n: min(nbytes[(n, b)] for b in cand) for n in names}
    weights = [[nbytes[(n, b)] - base[n] for b in cand] for n in names]
    values = [[J[(n, b)] - uni for b in cand] for n in names]
    choice, cell = multiple_choice_knapsack(weights, values, budget_bytes - floor_bytes, max_cells)
    alloc = {n: cand[k] for n, k in zip(names, choice)}
    predicted = outside + sum(nbytes[(n, alloc[n])] for n in names)
    cost = uni + sum(values[i][k] for i, k in enumerate(choice))
    quant = man["settings"]["quant"]
    members = dict(zip(names, scan["units"]["members"].to_list()))
    spec = spec_with_widths(quant, {m: alloc[n] for n in names for m in members[n]})  # a block: all its layers
    unit_bytes = sum(nbytes[(n, alloc[n])] for n in names)
    measured = _measure(man, spec, progress) if measure else None
    if measured is not None and abs(measured - predicted) > 0.005 * predicted:
        raise SensitivityError(f"the allocation's spec measures {measured} bytes, more than 0.5 % from the "
                               f"predicted {predicted}: the layers' sizes do not add up for this spec")
    out_p = Path(out) if out is not None else Path(scan_dir) / "recommend"
    res = Allocation(out_p, spec, alloc, budget_bytes, budget_text, predicted, measured, cost, uni,
                     8 * unit_bytes / params, cell, bias_source)
    out_p.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"unit": names, "bits": [alloc[n] for n in names],
                  "bytes": [nbytes[(n, alloc[n])] for n in names],
                  "marginal_cost": [values[i][k] for i, k in enumerate(choice)]}).write_parquet(
        out_p / "allocation.parquet")
    from qfair.models.quant import json_safe

    record = {"format": FORMAT, "format_version": 1, "scan": str(Path(scan_dir)), "spec": spec,
              "bias_weight": bias_weight, "candidate_bits": list(cand), "reference_bits": ref,
              "bias_source": bias_source,
              "objective": "bias_weight * harm({}/{}) + {}/{}, against the float model".format(
                  *BIAS_SOURCES[bias_source][0], *BIAS_SOURCES[bias_source][1]),
              "budget": {"given": budget, "bytes": budget_bytes, "read_as": budget_text, "cell_bytes": cell},
              "bits": alloc, "bytes": {"predicted": predicted, "measured": measured, "floor": floor_bytes,
                                       "outside_layers": outside},
              "bits_per_weight": res.bpw, "predicted_cost": cost, "uniform_cost": uni,
              "marginal_costs": {f"{n}@{b}": J[(n, b)] - uni for n in names for b in cand}}
    (out_p / "allocation.json").write_text(json.dumps(json_safe(record), indent=1) + "\n")
    (out_p / "spec.txt").write_text(spec + "\n")
    return res


def _measure(man: dict[str, Any], spec: str, progress: bool) -> int:
    from qfair.models import load_model
    from qfair.sensitivity.units import model_bytes

    st = man["settings"]
    load_kw = {k: v for k, v in (st.get("load") or {}).items() if v not in (None, "None")}
    lm = load_model(st["model"], quant=spec, progress=progress, **load_kw)
    return model_bytes(lm.model, lm.extra.get("packed_bytes"))
