"""qfair's own weight quantizers as specs: ``rtn`` and ``gptq`` (docs/compress.md).

::

    rtn:bits=4,group_size=64,sym=true
    gptq:bits=4,group_size=64,calib=generic,samples=128,seqlen=512,act_order=true
    gptq:fair=0.5,fair_probes=stereoset
    gptq:engine=llmcompressor          (llmcompressor's GPTQ, when installed)

``rtn`` rounds the float model's weights to the nearest grid point on load (no
data, seconds; not cached). ``gptq`` runs :mod:`qfair.compress` on the CPU on
calibration texts from the scan side of the probe split (see
:mod:`qfair.tasks.calibration_texts`), with ``fair=ALPHA`` adding the fairness
term built from scan-side bias pairs (:mod:`qfair.tasks.pairs`), and
caches the result under ``<cache>/qfair-quant-v1/<key>``: a float checkpoint
transformers reloads plus the integer codes (:mod:`qfair.compress.checkpoint`),
and the same model as a compressed-tensors ``pack-quantized`` checkpoint in
``compressed-tensors/`` (:mod:`qfair.compress.export`), all written in a
temporary directory and renamed into place. The key hashes the
float weights' identity, every setting, the calibration texts' and pairs'
sha256 and the library versions; ``fair=0`` is plain GPTQ (same entry).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from qfair.models.backends import base, llmcompressor, register_backend
from qfair.models.backends.base import Option, QuantBackend, SpecDef, parse_bool, parse_modules

CACHE_SUBDIR = "qfair-quant-v1"
ALGORITHM_VERSION = 1
_MARKER = "qfair-quantized.json"
ENGINES = ("qfair", "llmcompressor")


def _bits(v: str) -> int:
    try:
        b = int(v)
    except ValueError:
        b = 0
    if not 2 <= b <= 8:
        raise ValueError("expected an integer from 2 to 8")
    return b


def _group_size(v: str) -> int:
    try:
        g = int(v)
    except ValueError:
        g = 0
    if g < 1 and g != -1:
        raise ValueError("expected -1 (one group per output channel) or a positive integer")
    return g


def _alpha(v: str) -> float:
    try:
        x = base.parse_float(v)
    except ValueError:
        x = -1.0
    if x < 0:
        raise ValueError("expected a number >= 0 (0: plain GPTQ)")
    return x


def _engine(v: str) -> str:
    s = v.strip().lower()
    if s not in ENGINES:
        raise ValueError(f"expected one of {', '.join(ENGINES)}")
    return s


def _layer_bits(v: str) -> tuple[str, ...]:
    """``PATTERN:BITS+PATTERN:BITS...`` or a JSON file ``{"layer": bits}`` ->
    the rules as canonical ``PATTERN:BITS`` strings (in order: the first match wins)."""
    text = v.strip()
    if text.lower().endswith(".json"):
        p = Path(text).expanduser()
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read {p} as a JSON object of layer -> bits ({type(e).__name__})") from None
        if not isinstance(doc, dict) or not doc:
            raise ValueError(f"{p}: expected a non-empty JSON object of layer -> bits")
        items = [(str(k), str(b)) for k, b in doc.items()]
    else:
        items = [tuple(x.strip().rpartition(":")[::2]) for x in text.split("+")]  # type: ignore[misc]
    out = []
    for pattern, bits in items:
        if not pattern or not all(c.isalnum() or c in "._-*?[]" for c in pattern):
            raise ValueError("expected PATTERN:BITS joined by '+' (e.g. *.down_proj:8+model.layers.0.*:3; "
                             "patterns are module names, dotted suffixes or globs) or a .json file of layer -> bits")
        try:
            b = int(bits)
        except ValueError:
            b = 0
        if not 2 <= b <= 8:
            raise ValueError(f"bits of {pattern!r}: expected an integer from 2 to 8")
        out.append(f"{pattern}:{b}")
    return tuple(out)


def layer_bits_rules(value: tuple[str, ...]) -> list[tuple[str, int]]:
    """The parsed ``layer_bits`` option as (pattern, bits) pairs."""
    return [(p, int(b)) for p, _, b in (x.rpartition(":") for x in value)]


def _probes(v: str) -> str:
    from qfair.tasks.pairs import parse_probes

    return parse_probes(v)


_GRID = {
    "bits": Option(_bits, 4, "weight bits: 2..8"),
    "group_size": Option(_group_size, 64, "weights per scale along the input, -1 = per output channel (must "
                                          "divide every quantized layer's input width)"),
    "sym": Option(parse_bool, True, "symmetric integer grid (true) or with a zero point (false)"),
    "layer_bits": Option(_layer_bits, (), "bits of single layers: PATTERN:BITS joined by '+' (first match wins; "
                                          "a name, dotted suffix or glob) or a .json file of layer -> bits; "
                                          "the others take bits="),
}
_IGNORE = {"ignore": Option(parse_modules, ("lm_head",), "modules kept in full precision, joined by '+'")}
_GPTQ = {
    **_GRID,
    "calib": llmcompressor.OPTIONS["calib"],
    "samples": llmcompressor.OPTIONS["samples"],
    "seqlen": llmcompressor.OPTIONS["seqlen"],
    "split": llmcompressor.OPTIONS["split"],
    "calib_data": llmcompressor.OPTIONS["calib_data"],
    **_IGNORE,
    "dampening": Option(base.parse_positive_float, 0.01, "fraction of the Hessian's mean diagonal added to it"),
    "act_order": Option(parse_bool, False, "quantize columns by decreasing Hessian diagonal"),
    "fair": Option(_alpha, 0.0, "ALPHA >= 0: weight of the fairness term alpha*F added to the Hessian "
                                "(0: plain GPTQ)"),
    "fair_probes": Option(_probes, "crows_pairs", "bias pairs of the fairness term: tasks joined by '+' from "
                                                  "crows_pairs, stereoset (or their members), bbq; or a JSONL "
                                                  "file of {sent_more, sent_less}; scan side of split only"),
    "fair_pairs": Option(llmcompressor.positive_int, 64, "probe pairs used at most"),
    "engine": Option(_engine, "qfair", "qfair (this package's GPTQ) | llmcompressor (needs llmcompressor; "
                                       "no act_order, no fair)"),
}


@register_backend
class WeightQuant(QuantBackend):
    name = "qfair"
    builds_model = True
    loggers = llmcompressor.LOGGERS
    specs = (
        SpecDef("rtn", "round-to-nearest integer weights made here from the float model (no data)",
                {**_GRID, **_IGNORE}),
        SpecDef("gptq", "GPTQ integer weights made here from the float model, calibrated, optionally with a "
                        "fairness term (cached after the first load)", _GPTQ),
    )

    def to_config(self, spec: Any) -> Any:
        o = spec.options
        if spec.name == "gptq" and o["engine"] == "llmcompressor":
            return llmcompressor.config(spec)
        cfg = {"quant_method": f"{spec.name} (qfair)", "num_bits": o["bits"], "group_size": o["group_size"],
               "symmetric": o["sym"], "ignore": list(o["ignore"]), "layer_bits": list(o["layer_bits"])}
        if spec.name == "gptq":
            cfg.update({"calibration": o["calib"], "samples": o["samples"], "seqlen": o["seqlen"],
                        "split": o["split"], "calib_data": o.get("calib_data"), "dampening_frac": o["dampening"],
                        "act_order": o["act_order"], "fair_alpha": o["fair"],
                        "fair_probes": o["fair_probes"] if o["fair"] > 0 else None,
                        "fair_pairs": o["fair_pairs"] if o["fair"] > 0 else None})
        return cfg

    def load(self, spec: Any, request: Any) -> Any:
        if spec.name == "rtn":
            return _load_rtn(spec, request)
        if spec.options["engine"] == "llmcompressor":
            return _load_llmcompressor(spec, request)
        return _load_gptq(spec, request)


def _spec_error(spec: Any, msg: str) -> Exception:
    from qfair.models.quant import ModelError

    return ModelError(f"quantization spec {str(spec)!r}: {msg}")


def _grid(spec: Any) -> Any:
    from qfair.compress.grid import Grid

    o = spec.options
    return Grid(int(o["bits"]), int(o["group_size"]), bool(o["sym"]))


def _quantize(spec: Any, float_lm: Any, **kw: Any) -> Any:
    from qfair.compress.errors import CompressError
    from qfair.compress.model import quantize_model

    try:
        return quantize_model(float_lm.model, spec.name, _grid(spec), ignore=tuple(spec.options["ignore"]),
                              layer_bits=_resolved_layer_bits(spec, float_lm.model), **kw)
    except CompressError as e:
        raise _spec_error(spec, str(e)) from None


def _resolved_layer_bits(spec: Any, model: Any) -> dict[str, int]:
    """layer -> bits for the layers ``layer_bits`` names (CompressError for a pattern matching nothing)."""
    from qfair.compress.model import resolve_layer_bits, target_linears

    rules = layer_bits_rules(spec.options.get("layer_bits") or ())
    if not rules:
        return {}
    return resolve_layer_bits(list(target_linears(model, tuple(spec.options["ignore"]))), rules)


def _load_rtn(spec: Any, request: Any) -> Any:
    from qfair.compress.checkpoint import stored_bytes
    from qfair.models.loading import LoadedModel

    t0 = time.perf_counter()
    float_lm = request.load("none", device="cpu", dtype="float32")
    res = _quantize(spec, float_lm)
    extra = {"trust_remote_code": False, "packed_bytes": stored_bytes(float_lm.model, res.weights),
             "modules_not_converted": list(spec.options["ignore"]),
             "quant_details": {"method": "rtn", **_grid_info(spec), "layers": res.layers,
                               "build_seconds": res.seconds}}
    return LoadedModel(float_lm.model, float_lm.tokenizer, float_lm.device, spec, float_lm.source, "float32",
                       float_lm.checkpoint_path, float_lm.from_cache, time.perf_counter() - t0, extra)


def _grid_info(spec: Any) -> dict[str, Any]:
    o = spec.options
    return {"bits": o["bits"], "group_size": o["group_size"], "sym": o["sym"], "layer_bits": list(o["layer_bits"])}


def _load_llmcompressor(spec: Any, request: Any) -> Any:
    o = spec.options
    if o["act_order"] or o["fair"] > 0 or o["layer_bits"]:
        raise _spec_error(spec, "engine=llmcompressor takes neither act_order nor fair nor layer_bits; use engine=qfair")
    if base.dist_version("llmcompressor") is None:
        raise _spec_error(spec, f"engine=llmcompressor needs llmcompressor: {llmcompressor.INSTALL_HINT}")
    return llmcompressor.load(spec, request)


def _inputs(spec: Any) -> tuple[Any, Any]:
    """The calibration set and the probe pairs (None without fairness), checked before any work."""
    from qfair.tasks.calibration_texts import CalibrationError, calibration_set
    from qfair.tasks.pairs import PairError, probe_pairs
    from qfair.tasks.split import ProbeError

    o = spec.options
    try:
        calib = calibration_set(o["calib"], o["samples"], o["split"], o.get("calib_data"))
        pairs = probe_pairs(o["fair_probes"], o["fair_pairs"], o["split"]) if o["fair"] > 0 else None
    except (CalibrationError, PairError, ProbeError) as e:
        raise _spec_error(spec, str(e)) from None
    return calib, pairs


def _key_doc(spec: Any, src: Any, calib: Any, pairs: Any) -> dict[str, Any]:
    from qfair.models.quant import _format_value

    skip = {"calib", "calib_data", "fair_probes", "fair_pairs", "engine"}
    # layer_bits enters the key only when set: entries built before the option existed keep their keys
    settings = ",".join(f"{k}={_format_value(v)}" for k, v in sorted(spec.options.items())
                        if k not in skip and not (k == "layer_bits" and not v))
    return {"float": llmcompressor.float_identity(src), "spec": f"{spec.name}:{settings}",
            "calibration": calib.sha256, "pairs": None if pairs is None else pairs.sha256,
            "algorithm": ALGORITHM_VERSION,
            "versions": {d: base.dist_version(d) for d in ("transformers", "torch")}}


def _load_gptq(spec: Any, request: Any) -> Any:
    from qfair.compress.checkpoint import read_codes, stored_bytes, verify
    from qfair.compress.errors import CompressError
    from qfair.models.cache import cache_root
    from qfair.models.loading import LoadedModel

    t0 = time.perf_counter()
    calib, pairs = _inputs(spec)
    src = request.source()
    key_doc = _key_doc(spec, src, calib, pairs)
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:32]
    entry = cache_root(request.cache_dir) / CACHE_SUBDIR / key
    hit = (entry / _MARKER).is_file()
    this_build = None
    if not hit:
        llmcompressor.say(request.progress, f"gptq: quantizing the float model with {len(calib.texts)} calibration "
                                            f"texts ({calib.kind})"
                                            + (f" and {len(pairs.pairs)} probe pairs" if pairs else "")
                                            + f"; cached in {entry}")
        float_lm = request.load("none", device="cpu", dtype="float32")
        t1 = time.perf_counter()
        _build(spec, float_lm, calib, pairs, entry, key_doc, request.progress)
        this_build = time.perf_counter() - t1
        del float_lm
    model, tok = llmcompressor.load_checkpoint(entry, request, compressed=False)
    try:
        _, weights = read_codes(entry)
        verify(model, weights)
    except (CompressError, KeyError, OSError) as e:
        raise _spec_error(spec, f"the cache entry {entry} is damaged ({e}); delete it to rebuild") from None
    export = _ensure_export(entry, model, tok, weights)
    marker = json.loads((entry / _MARKER).read_text())
    details = {k: marker.get(k) for k in ("method", "bits", "group_size", "sym", "layer_bits", "act_order",
                                          "dampening", "alpha", "calibration", "pairs", "layers", "build_seconds",
                                          "build_profile")}
    details.update({"cache_entry": str(entry), "cache_hit": hit, "this_build_seconds": this_build, "key": key_doc,
                    "compressed_tensors": None if export is None else str(export)})
    extra = {"trust_remote_code": False, "packed_bytes": stored_bytes(model, weights),
             "modules_not_converted": list(spec.options["ignore"]), "quant_details": details}
    dev = model.get_input_embeddings().weight.device
    return LoadedModel(model, tok, dev, spec, src, "float32", str(entry), hit, time.perf_counter() - t0, extra)


def _ensure_export(entry: Path, model: Any, tok: Any, weights: dict[str, Any]) -> Path | None:
    """The entry's compressed-tensors checkpoint; an entry built before it existed
    gets it now (from the verified weights and codes), written aside and renamed
    (None when the cache is read-only or transformers could not reload these layers)."""
    from qfair.compress.export import EXPORT_DIR, reload_refusal, save_compressed_tensors

    target = entry / EXPORT_DIR
    if target.is_dir():
        return target
    if reload_refusal(weights) is not None:
        return None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=entry))
    except OSError:
        return None
    try:
        save_compressed_tensors(model, tok, weights, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, target)
    except OSError:  # another process renamed its copy first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _build(spec: Any, float_lm: Any, calib: Any, pairs: Any, entry: Path, key_doc: dict[str, Any],
           progress: bool) -> None:
    """Quantize ``float_lm`` in place and save it atomically at ``entry``."""
    import torch

    from qfair.compress.checkpoint import save_quantized
    from qfair.compress.errors import CompressError
    from qfair.compress.export import EXPORT_DIR, reload_refusal, save_compressed_tensors
    from qfair.compress.model import check_grid, stderr_progress

    o = spec.options
    model, tok = float_lm.model, float_lm.tokenizer
    try:
        layers = check_grid(model, _grid(spec), tuple(o["ignore"]))  # a bad group size: refused before any work
    except CompressError as e:
        raise _spec_error(spec, str(e)) from None
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out_emb is not None and in_emb is not None and out_emb.weight is in_emb.weight and out_emb in layers.values():
        model.config.tie_word_embeddings = False  # the quantized head gets its own weight

    def ids(text: str) -> Any:
        t = tok(text, truncation=True, max_length=int(o["seqlen"]), return_tensors="pt").input_ids[0]
        return t if t.numel() else torch.tensor([tok.eos_token_id or 0])

    calib_ids = [ids(t) for t in calib.texts]
    pair_ids = [(ids(a), ids(b)) for a, b in pairs.pairs] if pairs is not None else []
    res = _quantize(spec, float_lm, calibration=calib_ids, pairs=pair_ids, alpha=float(o["fair"]),
                    dampening=float(o["dampening"]), act_order=bool(o["act_order"]),
                    progress=stderr_progress if progress else None)
    from qfair.models.cache import clean_stale_tmp

    entry.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(entry.parent.parent, entry.parent.name)  # builds killed before their rename
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=entry.parent))
    try:
        save_quantized(model, tok, res, tmp)
        if reload_refusal(res.weights) is None:
            save_compressed_tensors(model, tok, res.weights, tmp / EXPORT_DIR)
        (tmp / "calibration.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                                                       for t in calib.texts), encoding="utf-8")
        if pairs is not None:
            (tmp / "pairs.jsonl").write_text("".join(json.dumps({"sent_more": a, "sent_less": b}, ensure_ascii=False)
                                                     + "\n" for a, b in pairs.pairs), encoding="utf-8")
        marker = {"format": "qfair-quantized", "version": 1, "spec": str(spec), "key": key_doc, "method": "gptq",
                  **_grid_info(spec), "act_order": o["act_order"], "dampening": o["dampening"], "alpha": o["fair"],
                  "calibration": calib.info(), "pairs": None if pairs is None else pairs.info(),
                  "layers": res.layers, "build_seconds": res.seconds,
                  "build_profile": {k: round(v, 3) for k, v in res.profile.items()},
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=1) + "\n")  # written last: marks a whole entry
        llmcompressor.move_into_place(tmp, entry, _MARKER)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
