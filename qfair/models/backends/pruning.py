"""Pruned models made here from the float model: ``prune-magnitude``,
``prune-wanda``, ``prune-sparsegpt`` and ``prune-layers`` (the algorithms:
:mod:`qfair.pruning`)::

    prune-magnitude:sparsity=0.5                       # per layer, lowest |W|
    prune-magnitude:pattern=2:4                        # 2 of every 4 inputs kept
    prune-wanda:sparsity=0.5,calib=generic,samples=64  # per row, lowest |W|·‖X‖
    prune-sparsegpt:sparsity=0.5                       # OBS mask and update of the kept weights
    prune-layers:drop=3+5                              # blocks 3 and 5 removed
    prune-layers:fraction=0.25                         # the deepest quarter but the last block
    prune-wanda:sparsity=0.5,then=bnb-nf4              # pruned, then quantized

The first load prunes the float model on the CPU and saves it as an ordinary
float checkpoint under ``<cache>/pruned-v1/<key>`` (the key hashes the float
weights' identity, the pruning settings, the calibration texts and the library
versions); every load then reads that checkpoint with the ``then=`` spec
(``none`` by default), so ``then=bnb-nf4`` quantizes the pruned float weights
exactly as ``bnb-nf4`` quantizes unpruned ones. ``then=`` takes the specs that
quantize a float checkpoint on load (bitsandbytes, quanto, torchao); inner
options are joined by ``;`` as in ``mixed``. Pruned weights are stored densely
(zeros included), so pruning alone does not change the stored bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qfair.models.backends import base, register_backend, spec_backend
from qfair.models.backends.base import Option, QuantBackend, SpecDef, parse_modules
from qfair.models.backends.llmcompressor import OPTIONS as CALIB_OPTIONS
from qfair.models.backends.llmcompressor import float_identity, move_into_place

CACHE_SUBDIR = "pruned-v1"
_MARKER = "qfair-pruned.json"
PRUNE_SPECS = ("prune-magnitude", "prune-wanda", "prune-sparsegpt", "prune-layers")


def _sparsity(v: str) -> float:
    x = base.parse_float(v)
    if not 0.0 < x < 1.0:
        raise ValueError("expected a fraction strictly between 0 and 1")
    return x


def _pattern(v: str) -> str:
    from qfair.pruning.masks import parse_pattern  # (no torch at import)

    return str(parse_pattern(v))


def _indices(v: str) -> str:
    """Block indices joined by '+', kept as that text (sorted, each once) so the spec prints back."""
    return "+".join(map(str, drop_indices(v)))


def drop_indices(v: str) -> list[int]:
    parts = [p.strip() for p in v.split("+")]
    try:
        out = [int(p) for p in parts]
    except ValueError:
        raise ValueError("expected block indices joined by '+', e.g. 3+5") from None
    if any(i < 0 for i in out):
        raise ValueError("block indices count from 0")
    return sorted(set(out))


def _then(v: str) -> str:
    from qfair.models.quant import ModelError, parse_quant_spec

    try:
        s = parse_quant_spec(v.strip().replace(";", ","))
    except ModelError as e:
        raise ValueError(str(e)) from None
    b = spec_backend(s.name)
    if s.name == "prequantized" or (b is not None and b.builds_model):
        raise ValueError(f"then= takes a spec that quantizes a float checkpoint on load (bnb-*, quanto-*, "
                         f"torchao-*), not {s.name!r}")
    return str(s).replace(",", ";")


def inner_spec(text: str) -> Any:
    from qfair.models.quant import parse_quant_spec

    return parse_quant_spec(text.replace(";", ","))


_THEN = Option(_then, "none", "the spec that then quantizes the pruned float model (options joined by ';')")
_WEIGHTS = {
    "sparsity": Option(_sparsity, None, "fraction of each layer's weights set to zero, in (0, 1) "
                                        "(implied by an N:M pattern)"),
    "pattern": Option(_pattern, "unstructured", "unstructured | N:M (keep N of every M consecutive inputs, "
                                                "e.g. 2:4, 4:8)"),
    "ignore": Option(parse_modules, ("lm_head",), "modules left unpruned, joined by '+' (embeddings never are)"),
    "then": _THEN,
}
_CALIB = CALIB_OPTIONS  # the calibration options of the gptq spec, same texts and split


@register_backend
class Pruning(QuantBackend):
    name = "pruning"
    builds_model = True
    specs = (
        SpecDef("prune-magnitude", "weights with the smallest |W| of each layer set to zero (or N:M)",
                dict(_WEIGHTS)),
        SpecDef("prune-wanda", "Wanda: weights with the smallest |W|·‖X‖ of each output row set to zero "
                               "(or N:M), calibrated", {**_WEIGHTS, **_CALIB}),
        SpecDef("prune-sparsegpt", "SparseGPT: mask by w²/[H⁻¹]ₖₖ per column block and the kept weights "
                                   "updated to preserve each layer's output, calibrated",
                {**_WEIGHTS, **_CALIB,
                 "blocksize": Option(base.parse_choice(32, 64, 128), 128, "columns per mask block and lazy update"),
                 "dampening": Option(base.parse_positive_float, 0.01,
                                     "fraction of the Hessian's mean diagonal added to it")}),
        SpecDef("prune-layers", "whole decoder blocks removed (the residual stream kept)",
                {"drop": Option(_indices, None, "blocks removed, counted from 0, joined by '+' (e.g. 3+5)"),
                 "fraction": Option(_sparsity, None, "fraction of the blocks removed: the deepest ones "
                                                     "before the last block"),
                 "then": _THEN}),
    )

    def check(self, spec: Any) -> None:
        o = spec.options
        if spec.name == "prune-layers":
            if (o.get("drop") is None) == (o.get("fraction") is None):
                raise ValueError("prune-layers needs exactly one of drop=I+J+... or fraction=F")
            return
        from qfair.pruning.masks import parse_pattern

        pat = parse_pattern(o["pattern"])
        if not pat.structured and o.get("sparsity") is None:
            raise ValueError(f"{spec.name} needs sparsity=S (a fraction in (0, 1)) or an N:M pattern")
        if pat.structured and o.get("sparsity") is not None and abs(o["sparsity"] - pat.sparsity) > 1e-9:
            raise ValueError(f"sparsity={o['sparsity']} disagrees with pattern={pat}, which prunes "
                             f"{pat.sparsity:g} of the weights; drop one of them")

    def to_config(self, spec: Any) -> Any:
        o = spec.options
        out = {"quant_method": f"qfair-{spec.name}", **{k: v for k, v in o.items() if k != "then"}}
        out["then"] = inner_spec(o["then"]).to_manifest()
        return out

    # -- building ---------------------------------------------------------
    def load(self, spec: Any, request: Any) -> Any:
        from qfair.models.cache import cache_root
        from qfair.models.quant import ModelError, spec_availability

        t0 = time.perf_counter()
        o = spec.options
        then = inner_spec(o["then"])
        if then.is_quantized:
            ok, why = spec_availability(then.name)
            if not ok:
                raise ModelError(f"quantization spec {str(spec)!r}: then={then} is not available here: {why}")
        calib = _calibration(spec)
        src = request.source()
        key_doc = {"float": float_identity(src), "spec": _canonical(spec),
                   "calibration": None if calib is None else calib.sha256,
                   "versions": {d: base.dist_version(d) for d in ("transformers", "torch")}, "format": 1}
        key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:32]
        entry = cache_root(request.cache_dir) / CACHE_SUBDIR / key
        hit = (entry / _MARKER).is_file()
        if not hit:
            _say(request.progress, f"{spec.name}: pruning the float model; cached in {entry}")
            float_lm = request.load("none", device="cpu", dtype="float32")
            if float_lm.quant.name != "none":
                raise ModelError(f"quantization spec {str(spec)!r}: the model is already quantized "
                                 f"({float_lm.quant.options.get('method')}); pruning needs a float checkpoint")
            _build(float_lm, spec, calib, entry, key_doc, _stored_dtype(src))
            del float_lm
        marker = json.loads((entry / _MARKER).read_text())
        lm = request.load(then, model=str(entry), gguf_file=None, revision=None)
        inner = {**then.to_manifest(), "modules_not_converted": lm.extra.get("modules_not_converted"),
                 "note": lm.extra.get("note"), "details": lm.extra.get("quant_details")}
        lm.extra["quant_details"] = {"cache_entry": str(entry), "cache_hit": hit, "pruning": marker["pruning"],
                                     "calibration": marker.get("calibration"),
                                     "build_seconds": marker.get("build_seconds"), "key": key_doc, "then": inner}
        lm.quant, lm.source, lm.checkpoint_path, lm.from_cache = spec, src, str(entry), hit
        lm.load_seconds = time.perf_counter() - t0
        return lm


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"qfair: {msg}", file=sys.stderr, flush=True)


def _canonical(spec: Any) -> str:
    """Every pruning setting (``then`` excluded: the cached checkpoint is the pruned float model)."""
    from qfair.models.quant import _format_value

    return spec.name + ":" + ",".join(f"{k}={_format_value(v)}" for k, v in sorted(spec.options.items())
                                      if k not in ("then", "calib", "calib_data"))


def _calibration(spec: Any) -> Any:
    if spec.name not in ("prune-wanda", "prune-sparsegpt"):
        return None
    from qfair.models.quant import ModelError
    from qfair.tasks.calibration_texts import CalibrationError, calibration_set
    from qfair.tasks.split import ProbeError

    o = spec.options
    try:
        return calibration_set(o["calib"], o["samples"], o["split"], o.get("calib_data"))
    except (CalibrationError, ProbeError) as e:
        raise ModelError(f"quantization spec {str(spec)!r}: {e}") from None


def _stored_dtype(src: Any) -> str:
    """The float dtype the checkpoint itself stores (the pruned copy keeps it): a
    local checkpoint's config ``dtype``, else float32 (GGUF is converted to float32)."""
    if src.kind == "local" and src.path:
        try:
            cfg = json.loads((Path(src.path) / "config.json").read_text())
        except (OSError, ValueError):
            return "float32"
        d = str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32")
        return d if d in ("float32", "bfloat16", "float16") else "float32"
    return "float32"


def prune_model(model: Any, tokenizer: Any, spec: Any, calib: Any = None) -> dict[str, Any]:
    """Prune ``model`` in place as ``spec`` says; the record of what was done.
    Every shape check runs before any weight changes (PruningError)."""
    import torch

    from qfair.pruning import PruningError
    from qfair.pruning.layers import check_drop, decoder_blocks, drop_blocks, fraction_to_drop
    from qfair.pruning.masks import parse_pattern
    from qfair.pruning.targets import check_widths, prunable_linears
    from qfair.pruning.wanda import input_norms
    from qfair.pruning.weights import prune_linears

    o = spec.options
    if spec.name == "prune-layers":
        n = len(decoder_blocks(model)[2])
        idx = check_drop(drop_indices(o["drop"]), n) if o.get("drop") is not None else fraction_to_drop(o["fraction"], n)
        kept = drop_blocks(model, idx)
        return {"method": "layers", "blocks_before": n, "dropped": idx, "kept": kept}
    pat = parse_pattern(o["pattern"])
    linears = prunable_linears(model, o["ignore"])
    if pat.structured:
        check_widths(linears, pat.m)
    sparsity = o.get("sparsity") if not pat.structured else pat.sparsity
    norms, tokens = None, None
    method = spec.name.removeprefix("prune-")
    batches = [] if calib is None else [
        torch.tensor([ids]) for ids in (tokenizer(t, truncation=True, max_length=int(o["seqlen"]))["input_ids"]
                                        for t in calib.texts) if ids]
    if method == "wanda":
        norms, tokens = input_norms(model, linears, batches)
    if method == "sparsegpt":
        from qfair.pruning.sparsegpt import hessians, sparsegpt_weight

        if pat.structured and int(o["blocksize"]) % pat.m:
            raise PruningError(f"pattern {pat} needs a blocksize that is a multiple of {pat.m}")
        xxt, tokens = hessians(model, linears, batches)
        pruned = {}
        for name, lin in linears.items():
            if name not in xxt:
                raise PruningError(f"layer {name} saw no calibration input; add it to ignore=")
            new = sparsegpt_weight(lin.weight, xxt.pop(name), tokens, sparsity, pat, int(o["blocksize"]),
                                   float(o["dampening"]))
            with torch.no_grad():
                lin.weight.copy_(new)
            pruned[name] = int((new == 0).sum())
    else:
        pruned = prune_linears(linears, method, sparsity, pat, norms)
    return {"method": method, "sparsity": sparsity, "pattern": str(pat),
            "comparison": "N:M groups along the input" if pat.structured
            else {"wanda": "each output row", "magnitude": "whole layer",
                  "sparsegpt": "each block of columns (all rows)"}[method],
            "ignore": list(o["ignore"]), "calibration_tokens": tokens, "pruned_weights": pruned}


def _build(float_lm: Any, spec: Any, calib: Any, entry: Path, key_doc: dict[str, Any], dtype: str) -> None:
    """Prune ``float_lm`` in place and save it atomically at ``entry``."""
    import torch

    from qfair.models.quant import ModelError, quiet_imports
    from qfair.pruning import PruningError

    model, tok = float_lm.model, float_lm.tokenizer
    t0 = time.perf_counter()
    try:
        record = prune_model(model, tok, spec, calib)
    except PruningError as e:
        raise ModelError(f"quantization spec {str(spec)!r}: {e}") from None
    seconds = time.perf_counter() - t0
    model.to(getattr(torch, dtype))
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=entry.parent))
    try:
        with quiet_imports():  # saving imports torchao when present, which prints at import
            model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if calib is not None:
            (tmp / "calibration.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                                                           for t in calib.texts), encoding="utf-8")
        (tmp / _MARKER).write_text(json.dumps({
            "format": "qfair-pruned", "version": 1, "spec": _canonical(spec), "key": key_doc, "pruning": record,
            "calibration": None if calib is None else calib.info(), "dtype": dtype, "build_seconds": seconds,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1) + "\n")
        move_into_place(tmp, entry, _MARKER)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
