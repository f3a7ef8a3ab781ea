"""The llmcompressor engine of the ``gptq`` spec (``gptq:engine=llmcompressor``;
the spec itself and qfair's own engine live in :mod:`.weight_quant`): GPTQ
integer weights made by llmcompressor, cached. (llmcompressor 0.14's AWQ and AutoRound do not
run on a CPU-only torch: AWQ pins memory for an accelerator, AutoRound needs
the auto-round package and a device; they are not offered.)

The spec names the bits, the group size and the calibration set::

    gptq:engine=llmcompressor,bits=4,group_size=64,calib=bias-balanced,samples=64

Calibration sets (``calib=``): ``generic``, ``bias-balanced`` or a file (see
:mod:`qfair.sensitivity.calibration`; both built-in sets take the scan side
of the probe split ``split=`` only). The first load quantizes the float model
on the CPU (minutes) and saves the compressed-tensors checkpoint under
``<cache>/calibrated-v1/<key>``, where the key hashes the float weights'
identity, the canonical spec, the calibration texts and the library versions;
later loads read it (seconds), de-quantized to the model's float dtype for
scoring (the fake-quantized weights: what the quantized model computes). The
checkpoint's packed sizes are what the sensitivity scan counts.

Group size: every quantized layer's input width must be a multiple of it;
SmolLM2-135M's 576-wide layers take 32 or 64, not 128 (576 = 9 x 64); -1
quantizes per output channel.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from qfair.models.backends import base
from qfair.models.backends.base import Option

CACHE_SUBDIR = "calibrated-v1"
_MARKER = "qfair-calibrated.json"


def positive_int(v: str) -> int:
    try:
        x = int(v)
    except ValueError:
        raise ValueError("expected a positive integer") from None
    if x < 1:
        raise ValueError("expected a positive integer")
    return x


def _fraction(v: str) -> float:
    x = float(v)
    if not 0.0 <= x < 1.0:
        raise ValueError("expected a number in [0, 1)")
    return x


def _calib(v: str) -> str:
    s = v.strip()
    if s.lower() in ("generic", "bias-balanced"):
        return s.lower()
    if not Path(s).expanduser().is_file():
        raise ValueError("expected generic, bias-balanced or an existing text/JSONL file")
    return str(Path(s).expanduser().resolve())


def _split(v: str) -> str:
    from qfair.sensitivity.probes import ProbeError, Split

    try:
        return str(Split.parse(v))
    except ProbeError as e:
        raise ValueError(str(e)) from None


def _path(v: str) -> str:
    p = Path(v.strip()).expanduser()
    if not p.is_file():
        raise ValueError("expected an existing file")
    return str(p.resolve())


# the calibration options of the gptq spec (shared with qfair's own engine)
OPTIONS = {
    "calib": Option(_calib, "generic", "calibration texts: generic | bias-balanced | FILE (.txt lines or .jsonl "
                                       "with a 'text' field)"),
    "samples": Option(positive_int, 64, "calibration texts used"),
    "seqlen": Option(positive_int, 128, "tokens per calibration text at most"),
    "split": Option(_split, "0.5:0", "probe split FRACTION:SEED whose scan side the built-in calibration "
                                     "sets and the fairness pairs draw from (the held-out side is never used)"),
    "calib_data": Option(_path, None, "a CrowS-Pairs file for calib=bias-balanced (default: the built-in samples)"),
}
LOGGERS = ("llmcompressor", "compressed_tensors")
INSTALL_HINT = ("make install-gptq, or pip install --no-deps llmcompressor==0.14.0.1 compressed-tensors==0.19.0 "
                "loguru (its declared transformers pin is older than the one installed)")


def config(spec: Any) -> dict[str, Any]:
    o = spec.options
    return {"quant_method": f"{spec.name} (llmcompressor, compressed-tensors)", "num_bits": o["bits"],
            "group_size": o["group_size"], "symmetric": o["sym"], "ignore": list(o["ignore"]),
            "calibration": o["calib"], "samples": o["samples"], "seqlen": o["seqlen"], "split": o["split"],
            "calib_data": o.get("calib_data"), **({"dampening_frac": o["dampening"]} if "dampening" in o else {})}


def load(spec: Any, request: Any) -> Any:
    """The LoadedModel of ``spec`` made by llmcompressor (cached)."""
    from qfair.models.cache import cache_root
    from qfair.models.loading import LoadedModel
    from qfair.models.quant import ModelError
    from qfair.sensitivity.calibration import CalibrationError, calibration_set
    from qfair.sensitivity.probes import ProbeError

    t0 = time.perf_counter()
    o = spec.options
    try:
        calib = calibration_set(o["calib"], o["samples"], o["split"], o.get("calib_data"))
    except (CalibrationError, ProbeError) as e:
        raise ModelError(f"quantization spec {str(spec)!r}: {e}") from None
    src = request.source()
    key_doc = {"float": float_identity(src), "spec": _canonical(spec), "calibration": calib.sha256,
               "versions": {d: base.dist_version(d) for d in ("llmcompressor", "compressed-tensors",
                                                                "transformers", "torch")}}
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:32]
    root = cache_root(request.cache_dir) / CACHE_SUBDIR
    entry = root / key
    hit = (entry / _MARKER).is_file()
    build_seconds = None
    if not hit:
        say(request.progress, f"{spec.name}: quantizing the float model with {len(calib.texts)} calibration "
                               f"texts ({calib.kind}); cached in {entry}")
        float_lm = request.load("none", device="cpu", dtype="float32")
        t1 = time.perf_counter()
        _build(float_lm, spec, calib, entry, key_doc)
        build_seconds = time.perf_counter() - t1
        del float_lm
    model, tok = load_checkpoint(entry, request)
    dev = model.get_input_embeddings().weight.device
    marker = json.loads((entry / _MARKER).read_text())
    extra = {"trust_remote_code": False, "packed_bytes": packed_bytes(entry),
             "modules_not_converted": list(o["ignore"]),
             "quant_details": {"cache_entry": str(entry), "cache_hit": hit, "calibration": calib.info(),
                               "build_seconds": marker.get("build_seconds"),
                               "this_build_seconds": build_seconds, "key": key_doc}}
    return LoadedModel(model, tok, dev, spec, src, "float32", str(entry), hit, time.perf_counter() - t0, extra)


def say(progress: bool, msg: str) -> None:
    if progress:
        print(f"qfair: {msg}", file=sys.stderr, flush=True)


def _canonical(spec: Any) -> str:
    from qfair.models.quant import _format_value

    # the options of qfair's own engine are left out: keys stay those of the entries made before it existed
    own = ("calib", "calib_data", "act_order", "fair", "fair_probes", "fair_pairs", "engine")
    return spec.name + ":" + ",".join(f"{k}={_format_value(v)}" for k, v in sorted(spec.options.items())
                                      if k not in own)


def float_identity(src: Any) -> dict[str, Any]:
    """What identifies the float weights without loading them: the GGUF file's
    sha256, or the sha256 of a local checkpoint's weight and config files."""
    from qfair.fsutil import sha256_file

    if src.gguf_file and src.gguf_sha256:
        return {"gguf_sha256": src.gguf_sha256}
    if src.path is None:
        return {"hub": src.id, "revision": src.revision}
    p = Path(src.path)
    files = sorted(f for f in p.iterdir() if f.suffix in (".safetensors", ".bin") or f.name == "config.json")
    return {"files": {f.name: sha256_file(f, memo=True) for f in files}}


def _recipe(spec: Any) -> Any:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    o = spec.options
    per_channel = int(o["group_size"]) == -1
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=int(o["bits"]), type="int", strategy="channel" if per_channel else "group",
        group_size=None if per_channel else int(o["group_size"]), symmetric=bool(o["sym"]), dynamic=False))
    from llmcompressor.modifiers.gptq import GPTQModifier

    return GPTQModifier(config_groups={"group_0": scheme}, ignore=list(o["ignore"]),
                        dampening_frac=float(o["dampening"]))


def _build(float_lm: Any, spec: Any, calib: Any, entry: Path, key_doc: dict[str, Any]) -> None:
    """Quantize ``float_lm`` in place with the calibration texts and save the
    compressed checkpoint atomically at ``entry``."""
    import logging

    from datasets import Dataset

    from qfair.models.quant import ModelError, quiet_imports

    model, tok = float_lm.model, float_lm.tokenizer
    bad = [n for n, m in model.named_modules() if type(m).__name__ == "Linear"
           and not any(n == i or n.endswith("." + i) for i in spec.options["ignore"])
           and int(spec.options["group_size"]) != -1 and m.in_features % int(spec.options["group_size"])]
    if bad:
        raise ModelError(f"quantization spec {spec.name!r}: group_size={spec.options['group_size']} does not divide "
                         f"the input width of {bad[0]} ({model.get_submodule(bad[0]).in_features}); use 32 or 64")
    enc = [tok(t, truncation=True, max_length=int(spec.options["seqlen"])) for t in calib.texts]
    ds = Dataset.from_dict({"input_ids": [e["input_ids"] for e in enc],
                            "attention_mask": [e["attention_mask"] for e in enc]})
    with quiet_imports():
        from llmcompressor import oneshot
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=entry.parent))
    try:
        t0 = time.perf_counter()
        _silence_llmcompressor()
        old = logging.getLogger("llmcompressor").level
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            oneshot(model=model, dataset=ds, recipe=_recipe(spec), num_calibration_samples=len(enc),
                    max_seq_length=int(spec.options["seqlen"]), shuffle_calibration_samples=False,
                    output_dir=None, log_dir=None)
            seconds = time.perf_counter() - t0
            model.save_pretrained(tmp, save_compressed=True)
        logging.getLogger("llmcompressor").setLevel(old)
        tok.save_pretrained(tmp)
        (tmp / "calibration.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                                                       for t in calib.texts), encoding="utf-8")
        (tmp / _MARKER).write_text(json.dumps({"format": "qfair-calibrated", "version": 1, "spec": str(
            spec), "key": key_doc, "calibration": calib.info(), "build_seconds": seconds,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1) + "\n")
        move_into_place(tmp, entry, _MARKER)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def move_into_place(tmp: Path, entry: Path, marker: str) -> None:
    """Rename a finished temporary directory to its cache entry; an entry left
    without its marker file (broken) is replaced, a complete one (another
    process finished first) is kept."""
    try:
        os.rename(tmp, entry)
    except OSError:
        if not (entry / marker).is_file():
            shutil.rmtree(entry, ignore_errors=True)
            os.rename(tmp, entry)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _silence_llmcompressor() -> None:
    """llmcompressor logs every layer through loguru to stdout (INFO, and METRIC
    above WARNING); keep errors only, on stderr."""
    try:
        from loguru import logger

        logger.remove()
        logger.add(sys.stderr, level="ERROR")
    except Exception:  # pragma: no cover
        pass


def load_checkpoint(entry: Path, request: Any, compressed: bool = True) -> tuple[Any, Any]:
    """The model and tokenizer saved at ``entry`` (de-quantized to float when
    ``compressed``: a compressed-tensors checkpoint), on the CPU, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qfair.models.loading import _progress
    from qfair.models.quant import ModelError, quiet_backend_loggers

    try:
        with warnings.catch_warnings(), quiet_backend_loggers(), _progress(request.progress):
            warnings.simplefilter("ignore")
            kw: dict[str, Any] = {}
            if compressed:
                from transformers import CompressedTensorsConfig

                kw["quantization_config"] = CompressedTensorsConfig(dequantize=True)
            model = AutoModelForCausalLM.from_pretrained(str(entry), dtype="auto", device_map="cpu", **kw)
        tok = AutoTokenizer.from_pretrained(str(entry))
    except Exception as e:
        raise ModelError(f"could not load the cached calibrated checkpoint {entry} ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]}); delete it to rebuild") from None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok


def packed_bytes(entry: Path) -> dict[str, int]:
    """Bytes of each quantized module as the checkpoint stores it (packed weights,
    scales, zero points, shape), from the safetensors headers."""
    from safetensors import safe_open

    sizes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
    per: dict[str, int] = {}
    quantized: set[str] = set()
    for f in sorted(entry.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                mod, _, leaf = k.rpartition(".")
                sl = fh.get_slice(k)
                n = 1
                for d in sl.get_shape():
                    n *= int(d)
                per[mod] = per.get(mod, 0) + n * sizes[sl.get_dtype()]
                if leaf == "weight_packed":
                    quantized.add(mod)
    return {m: per[m] for m in sorted(quantized)}
