"""``qfair sensitivity``: what quantizing one unit does (and, leave-one-out,
what keeping one unit in full precision recovers), on the scan side of the
probes, against the unquantized model.

Work plan (one process, two loaded copies of the model):

1. load the float model and the model quantized with the spec; the units are
   the modules the backend changed, grouped by block or one per layer;
2. check that the float model with every unit in place gives the quantized
   model's logits (recorded in ``sensitivity.json``);
3. score the base once (its float16 log-prob rows are kept for the KL);
4. for every unit: put it in, score, compare with the base, take it back
   out. Only the forward passes are repeated, nothing is reloaded.
5. with candidate widths (``widths``, linear or block units of an
   ``rtn``/``gptq`` spec): the spec is loaded once more per other width, and
   for every unit and width the model quantized at the spec's width everywhere
   but that unit, which comes from the other width's model, is scored against
   the base (``widths.parquet``; the units' bytes per width in
   ``width_units.parquet``). Block units put every layer of a block at one
   width: 7x fewer forward passes than linear units on a Llama, for a coarser
   choice.

Outputs (Parquet through polars, plus one JSON): see docs/sensitivity.md.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qfair.errors import QfairError
from qfair.sensitivity.measure import METRIC_NAMES, compare, score_probes
from qfair.sensitivity.probes import ProbeError, Split, build_probes, load_tasks
from qfair.sensitivity.units import UnitError, UnitSwapper, define_units, model_bytes

FORMAT = "qfair-sensitivity"
FORMAT_VERSION = 1
MANIFEST = "sensitivity.json"
MODES = ("single", "leave-one-out")


class SensitivityError(QfairError):
    """A user-caused problem with a scan or a recommendation (one line)."""


@dataclass
class ScanResult:
    out: Path
    n_units: int
    n_examples: int
    swap_max_abs_diff: float
    seconds: dict[str, float] = field(default_factory=dict)
    top: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    def text(self) -> str:
        lines = [f"qfair sensitivity: {self.n_units} units x {self.n_examples} probe examples -> {self.out}",
                 f"  swap check: max |logit difference| all-units-swapped vs the backend's model = "
                 f"{self.swap_max_abs_diff:.3g}",
                 f"  time: base {self.seconds.get('base', 0):.1f} s, median per unit "
                 f"{self.seconds.get('per_unit_median', 0):.1f} s, total {self.seconds.get('total', 0):.0f} s"]
        for metric, items in self.top.items():
            lines.append(f"  top units by {metric}: " + ", ".join(f"{u} ({v:+.3g})" for u, v in items))
        return "\n".join(lines)


def _parse_modes(mode: str | None, widths: bool = False) -> tuple[str, ...]:
    """The unit modes to run; ``none`` (only with candidate widths) runs none of
    them, and is the default of a width scan, whose allocation reads only the
    width rows (the single-unit rows would double its cost)."""
    m = ("none" if widths else "single") if mode is None else mode.strip().lower()
    if m == "both":
        return MODES
    if m == "none":
        if not widths:
            raise SensitivityError("--mode none: only a width scan (--bits) may skip the unit modes; "
                                   "expected single, leave-one-out or both")
        return ()
    if m not in MODES:
        raise SensitivityError(f"unknown --mode {mode!r}; expected single, leave-one-out, both or none")
    return (m,)


def _check_out(out: Path, overwrite: bool, model: str | None = None, data_files: dict[str, Any] | None = None) -> None:
    from qfair.fsutil import PathError, check_not_input

    inputs: dict[str, Any] = {f"--data-file {k}": v for k, v in (data_files or {}).items() if str(v) != "hf"}
    if model is not None and Path(model).exists():
        inputs["--model"] = model
    try:  # a symlink loop, or an --out that is (or holds) an input
        check_not_input(out, inputs)
    except PathError as e:
        raise SensitivityError(str(e)) from None
    if out.exists() and not out.is_dir():
        raise SensitivityError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SensitivityError(f"{out}: directory exists and is not empty (use --overwrite to replace it)")


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"qfair: {msg}", file=sys.stderr, flush=True)


#: Specs the scan cannot run, and why (``qfair dump`` runs them: it scores under no_grad).
SCAN_REFUSED = {
    "quanto-int4": "quanto's int4 weights fail under torch.inference_mode, which the scan's scoring loop uses",
    "quanto-int2": "quanto's int2 weights fail under torch.inference_mode, which the scan's scoring loop uses",
}


def check_scan_spec(quant: Any) -> None:
    """Refuse, in one line and before any work, a spec the scan cannot run."""
    from qfair.models import ModelError, parse_quant_spec

    try:
        spec = parse_quant_spec(quant)
    except ModelError as e:
        raise SensitivityError(str(e)) from None
    if spec.name in SCAN_REFUSED:
        raise SensitivityError(f"--quant {spec.name}: the scan cannot run this spec ({SCAN_REFUSED[spec.name]}); "
                               "choose another spec (e.g. quanto-int8); qfair dump runs it")


def load_pair(model: str | None, quant: str, load_kwargs: dict[str, Any] | None = None,
              progress: bool = True) -> tuple[Any, Any]:
    """(float LoadedModel, quantized LoadedModel) of the same checkpoint."""
    from qfair.models import load_model, parse_quant_spec

    spec = parse_quant_spec(quant)
    if not spec.is_quantized or spec.name == "prequantized":
        raise SensitivityError(f"--quant {quant!r}: a scan needs a quantization spec that quantizes the "
                               "float model (e.g. bnb-nf4)")
    if spec.name == "prune-layers":
        raise SensitivityError(f"--quant {quant!r}: a scan swaps blocks between the float and the compressed "
                               "model, which needs the same blocks in both; removed blocks cannot be swapped")
    kw = {k: v for k, v in (load_kwargs or {}).items() if v is not None}
    base = load_model(model, quant="none", progress=progress, **kw)
    q = load_model(model, quant=spec, progress=progress, **kw)
    return base, q


WIDTH_SPECS = ("rtn", "gptq")


def parse_widths(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"3,4,8"`` -> (3, 4, 8): candidate bit widths, each 2..8."""
    if text is None:
        return None
    items = [x.strip() for x in text.split(",")] if isinstance(text, str) else [str(x) for x in text]
    out = set()
    for x in items:
        try:
            b = int(x)
        except ValueError:
            b = 0
        if not 2 <= b <= 8:
            raise SensitivityError(f"--bits {text if isinstance(text, str) else ','.join(items)!s}: expected bit "
                                   f"widths from 2 to 8 joined by ',' (e.g. 3,4,8); got {x!r}")
        out.add(b)
    return tuple(sorted(out))


def width_spec(spec: Any, bits: int) -> Any:
    """``spec`` (rtn/gptq) at another uniform width."""
    from qfair.models import QuantSpec

    return QuantSpec(spec.name, {**spec.options, "bits": int(bits)})


def _width_donors(model: str | None, quant_lm: Any, widths: tuple[int, ...], load_kwargs: dict[str, Any] | None,
                  progress: bool, loaded: dict[int, Any] | None) -> tuple[int, dict[int, Any]]:
    """(reference width, {other width: LoadedModel}) for a width scan."""
    from qfair.models import load_model

    spec = quant_lm.quant
    if spec.name not in WIDTH_SPECS or spec.options.get("engine", "qfair") != "qfair" or spec.options["layer_bits"]:
        raise SensitivityError(f"--bits: candidate widths need an rtn or gptq spec without layer_bits (got "
                               f"{str(spec)!r})")
    ref = int(spec.options["bits"])
    kw = {k: v for k, v in (load_kwargs or {}).items() if v is not None}
    donors = {}
    for b in widths:
        if b == ref:
            continue
        donors[b] = (loaded or {}).get(b) or load_model(model, quant=width_spec(spec, b), progress=progress, **kw)
    return ref, donors


def swap_check(swapper: UnitSwapper, quant_model: Any, probes: Any) -> dict[str, Any]:
    """Logits of the float model with every unit in place against the
    quantized model's own, on the first probe examples (context + first choice)."""
    import torch

    swapper.set_quantized(())
    seqs = []
    for enc in probes.encoded[:4]:
        seq = enc.context_enc + (enc.conts[0] if enc.conts else [])
        if len(seq) > 1:
            seqs.append(seq)
    worst, n = 0.0, 0
    with torch.inference_mode():
        ref = [quant_model(torch.tensor([s], device=_device(quant_model))).logits.float() for s in seqs]
        swapper.set_quantized(swapper.all())
        try:
            for s, r in zip(seqs, ref):
                out = swapper.host(torch.tensor([s], device=_device(swapper.host))).logits.float()
                worst = max(worst, float((out - r).abs().max()))
                n += int(r.shape[1])
        finally:
            swapper.set_quantized(())
    return {"max_abs_logit_diff": worst, "positions": n, "bitwise_equal": worst == 0.0}


def _device(model: Any) -> Any:
    return model.get_input_embeddings().weight.device


def run_scan(out: str | os.PathLike, *, model: str | None = None, quant: str = "bnb-nf4",
             tasks: Any = None, data_files: dict[str, Any] | None = None, limit: int | None = None,
             data_dir: Any = None, unit: str = "block", mode: str | None = "single", split: str | Split = "0.5:0",
             resamples: int = 10_000, seed: int = 0, batch_size: int = 32,
             load_kwargs: dict[str, Any] | None = None, overwrite: bool = False, progress: bool = True,
             loaded: tuple[Any, Any] | None = None, only: Any = None, widths: Any = None,
             width_models: dict[int, Any] | None = None, objectives: Sequence[Any] = ()) -> ScanResult:
    """Run a sensitivity scan and write its directory (see the module doc).

    ``loaded`` = (float LoadedModel, quantized LoadedModel) skips loading (the
    library path; the scan swaps their modules and restores them at the end).
    ``only``: scan these unit names only (the uniform rows still quantize every unit).
    ``data_dir``: a ``qfair data fetch`` directory the probe tasks are read from.
    ``widths``: candidate bit widths (e.g. ``"3,4,8"``; needs an rtn/gptq spec); ``width_models``: {bits: LoadedModel} already loaded.
    ``mode=None``: ``single``, or ``none`` for a width scan (only its width rows).
    ``objectives``: more probe sets scored in every model state, each with
    ``bind(model, tokenizer, device)`` (the float model, once), ``score(model)``,
    ``rows(state, resamples=, seed=)`` (rows like :func:`compare`'s) and
    ``info()``, e.g. :class:`qfair.generation.probe_objective.GenProbeObjective`;
    with one, the probe tasks need no bias probe.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    out_p = Path(out)
    modes = _parse_modes(mode, widths is not None)
    sp = Split.parse(split)
    if loaded is None:
        check_scan_spec(quant)
    _check_out(out_p, overwrite, model=model, data_files=data_files)
    wlist = parse_widths(widths)
    # a bad row stops the run before the model load
    task_objs = load_tasks(tasks, data_files, limit, data_dir, require_bias=not objectives)
    t0 = time.perf_counter()
    if loaded is None:
        base_lm, quant_lm = load_pair(model, quant, load_kwargs, progress)
    else:
        base_lm, quant_lm = loaded
    ref_bits, donors = (_width_donors(model, quant_lm, wlist, load_kwargs, progress, width_models)
                        if wlist is not None else (None, {}))
    t_load = time.perf_counter() - t0
    records = {"base": _manifest(base_lm), "quantized": _manifest(quant_lm)}  # before the scan's work
    packed = quant_lm.extra.get("packed_bytes")
    try:
        units = define_units(base_lm.model, quant_lm.model, unit, packed)
    except UnitError as e:
        raise SensitivityError(str(e)) from None
    if only is not None:
        missing = sorted(set(only) - {u.name for u in units})
        if missing:
            raise SensitivityError(f"unknown unit(s) {', '.join(missing)}")
    probes = build_probes(task_objs, base_lm.tokenizer, sp, "scan", require_bias=not objectives)
    swapper = UnitSwapper(base_lm.model, quant_lm.model, units,
                          extra={f"bits{b}": lm.model for b, lm in donors.items()} or None)
    width_bytes = _width_bytes(units, wlist, ref_bits, donors)
    width_rows: list[dict[str, Any]] = []
    host, tok = base_lm.model, base_lm.tokenizer
    dev = getattr(base_lm, "device", None)
    # sizes as loaded (bitsandbytes repacks 4-bit constants for its CPU kernels on the first forward)
    float_total = model_bytes(base_lm.model)
    quant_total = model_bytes(quant_lm.model, packed)
    check = swap_check(swapper, quant_lm.model, probes)
    _say(progress, f"{len(units)} units ({unit}), {len(probes)} probe examples on the scan side "
                   f"({probes.n_rows} scored tokens); swap check max |Δlogit| = {check['max_abs_logit_diff']:.3g}")

    rows: list[dict[str, Any]] = []
    ex_rows: list[dict[str, Any]] = []
    timing: list[dict[str, Any]] = []

    def more_rows() -> list[dict[str, Any]]:
        """The objectives' rows of the host's present state."""
        out = []
        for o in objectives:
            t = time.perf_counter()
            out.extend(o.rows(o.score(host), resamples=resamples, seed=seed))
            obj_seconds[0] += time.perf_counter() - t
        return out

    obj_seconds = [0.0]

    def record(mode_name: str, unit_name: str | None, unit_index: int | None, scored: Any) -> None:
        if mode_name != "base":
            for r in [*compare(probes, base, scored, resamples=resamples, seed=seed), *more_rows()]:
                rows.append({"mode": mode_name, "unit": unit_name, "unit_index": unit_index, **r})
        for i, d in enumerate(probes.docs):
            ex_rows.append({"mode": mode_name, "unit": unit_name, "example_id": d.example_id, "task": d.task,
                            "group": d.group, "role": probes.roles[i],
                            **{m: _f(scored.values[m][i]) for m in METRIC_NAMES}})

    try:
        with _quiet_torch():
            base = score_probes(host, tok, probes, keep_rows=True, batch_size=batch_size, device=dev)
            for o in objectives:  # the float model's texts and rows
                o.bind(host, tok, dev)
            record("base", None, None, base)
            swapper.set_quantized(swapper.all())
            uni = score_probes(host, tok, probes, base=base, batch_size=batch_size, device=dev)
            record("uniform", "<all units>", None, uni)
            timing.append({"mode": "uniform", "unit": "<all units>", "seconds": uni.seconds})
            jobs = [(m, u) for m in modes for u in units if only is None or u.name in only]
            bar = tqdm(jobs, desc="qfair sensitivity", unit="unit", disable=not progress or not jobs,
                       dynamic_ncols=True)
            for m, u in bar:
                bar.set_postfix_str(f"{m} {u.name}")
                others = [x.name for x in units if x.name != u.name]
                swapper.set_quantized([u.name] if m == "single" else others)
                s = score_probes(host, tok, probes, base=base, batch_size=batch_size, device=dev)
                record(m, u.name, u.index, s)
                timing.append({"mode": m, "unit": u.name, "seconds": s.seconds})
            bar.close()
            if wlist is not None:
                # the reference width of every unit is the uniform model itself
                uni_rows = [r for r in rows if r["mode"] == "uniform"]
                uni_rows = [{k: v for k, v in r.items() if k not in ("mode", "unit", "unit_index")} for r in uni_rows]
                wjobs = [(u, b) for u in units for b in wlist if only is None or u.name in only]
                bar = tqdm(wjobs, desc="qfair sensitivity widths", unit="unit", disable=not progress,
                           dynamic_ncols=True)
                for u, b in bar:
                    if b == ref_bits:
                        width_rows.extend({"unit": u.name, "bits": b, **r} for r in uni_rows)
                        continue
                    bar.set_postfix_str(f"{u.name} at {b} bits")
                    swapper.assign({x.name: (f"bits{b}" if x.name == u.name else "quant") for x in units})
                    s = score_probes(host, tok, probes, base=base, batch_size=batch_size, device=dev)
                    width_rows.extend({"unit": u.name, "bits": b, **r}
                                      for r in [*compare(probes, base, s, resamples=resamples, seed=seed),
                                                *more_rows()])
                    timing.append({"mode": f"bits{b}", "unit": u.name, "seconds": s.seconds})
                bar.close()
    finally:
        swapper.restore()

    per_unit = [t["seconds"] for t in timing if t["mode"] != "uniform"]  # unit modes and widths
    seconds = {"load": t_load, "base": base.seconds, "objectives": obj_seconds[0],
               "per_unit_median": float(np.median(per_unit)) if per_unit else 0.0}
    table = _write_outputs(out_p, t_start, seconds, units, rows, ex_rows, probes, timing, wlist, width_rows,
                           width_bytes, model=model, quant_lm=quant_lm, task_objs=task_objs, data_files=data_files,
                           limit=limit, data_dir=data_dir, unit=unit, modes=modes, ref_bits=ref_bits, sp=sp,
                           resamples=resamples, seed=seed, batch_size=batch_size, load_kwargs=load_kwargs,
                           records=records, float_total=float_total, quant_total=quant_total, check=check, objectives=objectives)
    return ScanResult(out_p, len(units), len(probes), check["max_abs_logit_diff"], seconds,
                      top_units(table, n=3))


def _width_bytes(units: list[Any], wlist: Any, ref_bits: Any, donors: dict[int, Any]) -> list[dict[str, Any]]:
    """Each unit's stored bytes at each candidate width (--bits)."""
    width_bytes = []
    if wlist is not None:
        from qfair.sensitivity.units import members_bytes

        for u in units:
            for b in wlist:
                nb = u.quant_bytes if b == ref_bits else members_bytes(donors[b].model, u.members,
                                                                        donors[b].extra.get("packed_bytes"))
                width_bytes.append({"unit": u.name, "bits": b, "n_params": u.n_params, "bytes": int(nb)})
    return width_bytes


def _write_outputs(out_p: Path, t_start: float, seconds: dict[str, float], units: list[Any],
                   rows: list[dict[str, Any]], ex_rows: list[dict[str, Any]], probes: Any,
                   timing: list[dict[str, Any]], wlist: Any, width_rows: list[dict[str, Any]],
                   width_bytes: list[dict[str, Any]], *, model: str | None, quant_lm: Any, task_objs: list[Any],
                   data_files: dict[str, Any] | None, limit: int | None, data_dir: Any, unit: str, modes: Any,
                   ref_bits: Any, sp: Split, resamples: int, seed: int, batch_size: int,
                   load_kwargs: dict[str, Any] | None, records: dict[str, Any], float_total: int, quant_total: int,
                   check: dict[str, Any], objectives: Sequence[Any] = ()) -> Any:
    """The scan directory: its tables (Parquet) and its manifest; returns the sensitivity table."""
    import polars as pl

    out_p.mkdir(parents=True, exist_ok=True)
    units_df = pl.DataFrame({
        "unit": [u.name for u in units], "unit_index": [u.index for u in units], "kind": [u.kind for u in units],
        "n_members": [len(u.members) for u in units], "members": [list(u.members) for u in units],
        "n_params": [u.n_params for u in units], "float_bytes": [u.float_bytes for u in units],
        "quant_bytes": [u.quant_bytes for u in units]},
        schema={"unit": pl.Utf8, "unit_index": pl.Int64, "kind": pl.Utf8, "n_members": pl.Int64,
                "members": pl.List(pl.Utf8), "n_params": pl.Int64, "float_bytes": pl.Int64,
                "quant_bytes": pl.Int64})
    table = pl.DataFrame(rows, schema=sensitivity_schema())
    examples = pl.DataFrame(ex_rows, schema=examples_schema())
    split_df = pl.DataFrame(probes.split_rows, schema={"example_id": pl.Utf8, "task": pl.Utf8, "group": pl.Utf8,
                                                       "role": pl.Utf8, "side": pl.Utf8, "key": pl.Utf8})
    timing_df = pl.DataFrame(timing, schema={"mode": pl.Utf8, "unit": pl.Utf8, "seconds": pl.Float64})
    tables = [("units", units_df), ("sensitivity", table), ("examples", examples), ("split", split_df),
              ("timing", timing_df)]
    if wlist is not None:
        tables += [("widths", pl.DataFrame(width_rows, schema=widths_schema())),
                   ("width_units", pl.DataFrame(width_bytes, schema={"unit": pl.Utf8, "bits": pl.Int64,
                                                                     "n_params": pl.Int64, "bytes": pl.Int64}))]
    for name, df in tables:
        df.write_parquet(out_p / f"{name}.parquet")
    seconds["total"] = time.perf_counter() - t_start
    from qfair.models.quant import json_safe
    from qfair.provenance import library_versions

    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "settings": {"model": model, "quant": str(quant_lm.quant), "tasks": [t.name for t in task_objs],
                     "data_files": {k: str(v) for k, v in sorted((data_files or {}).items())}, "limit": limit,
                     **({"data_dir": str(data_dir)} if data_dir is not None else {}),
                     "unit": unit, "modes": list(modes), "widths": list(wlist) if wlist else None,
                     "reference_bits": ref_bits, "split": str(sp), "resamples": resamples, "seed": seed,
                     "objectives": [o.info() for o in objectives],
                     "batch_size": batch_size,
                     "load": {k: str(v) for k, v in sorted((load_kwargs or {}).items()) if v is not None}},
        "split": {"fraction": sp.fraction, "seed": sp.seed, "rule": "sha256 of the rendered example text",
                  "n_scan": int(sum(s == "scan" for s in probes.split_rows["side"])),
                  "n_heldout": int(sum(s == "heldout" for s in probes.split_rows["side"]))},
        "tasks": probes.task_infos,
        "models": records,
        "bytes": {"float_model": float_total, "quantized_model": quant_total,
                  "units_float": sum(u.float_bytes for u in units),
                  "units_quantized": sum(u.quant_bytes for u in units)},
        "swap_check": check,
        "seconds": seconds,
        "torch_threads": _threads(),
        "library_versions": library_versions(imported_only=True),
    }
    (out_p / MANIFEST).write_text(json.dumps(json_safe(manifest), indent=1, ensure_ascii=False) + "\n")
    return table


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _manifest(lm: Any) -> dict[str, Any]:
    """The loaded model's record for sensitivity.json; a model that cannot give one
    stops the scan (a record holding an error would pass for a scan's provenance)."""
    try:
        return lm.manifest()
    except Exception as e:
        raise SensitivityError(f"cannot record the loaded model for sensitivity.json "
                               f"({type(e).__name__}: {e})") from None


def _f(x: Any) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


class _quiet_torch:
    """torch.inference_mode plus no per-call backend warnings for the scan's loop."""

    def __enter__(self):
        import warnings

        import torch

        self._inf = torch.inference_mode()
        self._inf.__enter__()
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")
        return self

    def __exit__(self, *exc):
        self._w.__exit__(*exc)
        return self._inf.__exit__(*exc)


def sensitivity_schema() -> dict[str, Any]:
    import polars as pl

    return {"mode": pl.Utf8, "unit": pl.Utf8, "unit_index": pl.Int64, "set": pl.Utf8, "group": pl.Utf8,
            "metric": pl.Utf8, "n": pl.Int64, "base": pl.Float64, "value": pl.Float64, "delta": pl.Float64,
            "ci_low": pl.Float64, "ci_high": pl.Float64, "p": pl.Float64}


def widths_schema() -> dict[str, Any]:
    import polars as pl

    s = sensitivity_schema()
    return {"unit": pl.Utf8, "bits": pl.Int64, **{k: v for k, v in s.items() if k not in ("mode", "unit",
                                                                                           "unit_index")}}


def examples_schema() -> dict[str, Any]:
    import polars as pl

    return {"mode": pl.Utf8, "unit": pl.Utf8, "example_id": pl.Utf8, "task": pl.Utf8, "group": pl.Utf8,
            "role": pl.Utf8, **{m: pl.Float64 for m in METRIC_NAMES}}


# the headline (set, metric) of each objective and whether larger deltas are worse
HEADLINE = (("bias", "gap_shift"), ("bias", "pct_stereotype"), ("bias", "likelihood_diff"), ("all", "kl"),
            ("general", "acc"))


def top_units(table: Any, n: int = 3, mode: str = "single") -> dict[str, list[tuple[str, float]]]:
    """The ``n`` units with the largest harm per headline metric (abs delta for
    bias metrics, delta for KL, -delta for accuracy)."""
    import polars as pl

    out: dict[str, list[tuple[str, float]]] = {}
    t = table.filter((pl.col("mode") == mode) & pl.col("group").is_null())
    for set_name, metric in HEADLINE:
        s = t.filter((pl.col("set") == set_name) & (pl.col("metric") == metric))
        if s.height == 0:
            continue
        harm = harm_expr(metric)
        s = s.with_columns(harm.alias("_h")).sort(["_h", "unit_index"], descending=[True, False]).head(n)
        out[f"{set_name}/{metric}"] = list(zip(s["unit"].to_list(), s["delta"].to_list()))
    return out


def harm_expr(metric: str) -> Any:
    """How harmful a delta is, larger = worse (polars expression on ``delta``)."""
    import polars as pl

    if metric == "acc":
        return -pl.col("delta")
    if metric in ("pct_stereotype", "likelihood_diff", "stereo_gap"):
        return pl.col("delta").abs()
    return pl.col("delta")


def read_scan(path: str | os.PathLike) -> dict[str, Any]:
    """The scan directory's manifest and tables (``units``, ``sensitivity``, ``examples``, ``split``, ``timing``,
    and ``widths``, ``width_units`` for a scan with candidate widths)."""
    import polars as pl

    p = Path(path)
    mf = p / MANIFEST
    if not mf.is_file():
        raise SensitivityError(f"{mf}: missing; not a sensitivity directory (written by qfair sensitivity)")
    try:
        manifest = json.loads(mf.read_text())
    except ValueError as e:
        raise SensitivityError(f"{mf}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise SensitivityError(f"{mf}: field 'format' is {manifest.get('format')!r}, expected {FORMAT!r}")
    out: dict[str, Any] = {"manifest": manifest, "path": p}
    for name in ("units", "sensitivity", "examples", "split", "timing"):
        f = p / f"{name}.parquet"
        if not f.is_file():
            raise SensitivityError(f"{f}: missing (an incomplete sensitivity directory)")
        out[name] = pl.read_parquet(f)
    for name in ("widths", "width_units"):  # only a scan with candidate widths has them
        f = p / f"{name}.parquet"
        if f.is_file():
            out[name] = pl.read_parquet(f)
    return out


__all__ = ["run_scan", "read_scan", "ScanResult", "SensitivityError", "ProbeError", "top_units", "MODES",
           "load_pair", "swap_check", "harm_expr"]
