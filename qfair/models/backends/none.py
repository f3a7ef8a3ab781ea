"""``none`` (full precision) and ``prequantized`` (a checkpoint that carries its
own quantization config, loaded as is)."""
from __future__ import annotations

import json
from typing import Any

from qfair.models.backends import base, register_backend
from qfair.models.backends.base import QuantBackend, SpecDef

# checkpoint formats transformers can load when their kernel package is installed:
# (format, quant_method values in a config's quantization_config, distributions: any one suffices)
PREQUANTIZED_FORMATS = (
    ("GPTQ", ("gptq",), ("gptqmodel", "auto-gptq")),
    ("AWQ", ("awq",), ("autoawq", "gptqmodel")),
    ("compressed-tensors", ("compressed-tensors",), ("compressed-tensors",)),
    ("bitsandbytes", ("bitsandbytes",), ("bitsandbytes",)),
    ("quanto", ("quanto",), ("optimum-quanto",)),
    ("torchao", ("torchao",), ("torchao",)),
    ("HQQ", ("hqq",), ("hqq",)),
)


def load_config(quantization_config: Any) -> Any:
    """The ``quantization_config`` to load a pre-quantized checkpoint with (None:
    the checkpoint's own). A compressed-tensors ``pack-quantized`` checkpoint with
    asymmetric weights (packed zero points) is de-quantized while loading
    (``dequantize=True``): transformers' default route first builds the
    compressed layout, in which compressed-tensors (0.20.1) gives the zero points
    their unpacked shape, and then refuses the checkpoint's packed ones as a size
    mismatch. (With several weight schemes the default route is kept: de-quantizing
    on load decodes every layer with one scheme, and a loud refusal is better
    than wrong weights.)"""
    qc = quantization_config.to_dict() if hasattr(quantization_config, "to_dict") else dict(quantization_config)
    if qc.get("quant_method") != "compressed-tensors":
        return None
    asym = any(g.get("format", qc.get("format")) == "pack-quantized" and (g.get("weights") or {}).get("symmetric") is False
               for g in (qc.get("config_groups") or {}).values() if isinstance(g, dict))
    schemes = {json.dumps(g.get("weights"), sort_keys=True) for g in (qc.get("config_groups") or {}).values()
               if isinstance(g, dict)}
    if not asym or len(schemes) > 1:  # several schemes: de-quantizing on load would decode all with one
        return None
    from transformers import CompressedTensorsConfig

    return CompressedTensorsConfig(dequantize=True)


def loadable_formats() -> tuple[list[str], list[str]]:
    """(formats whose package is installed, formats that cannot load here: 'FMT (needs pkg)')."""
    ok, missing = [], []
    for fmt, _, dists in PREQUANTIZED_FORMATS:
        if any(base.dist_version(d) for d in dists):
            ok.append(fmt)
        else:
            missing.append(f"{fmt} (needs {' or '.join(dists)})")
    return ok, missing


@register_backend
class NoQuantization(QuantBackend):
    name = "none"
    specs = (SpecDef("none", "full precision (the base model)"),)


@register_backend
class Prequantized(QuantBackend):
    name = "prequantized"
    specs = (SpecDef("prequantized",
                     "an already-quantized checkpoint (GPTQ/AWQ/compressed-tensors/...) loaded as is; "
                     "auto-detected with 'none'"),)

    def availability(self, spec: str, cuda: bool) -> tuple[bool, str]:
        ok, missing = loadable_formats()
        d = self.spec_def(spec).description
        can = f"loads here: {', '.join(ok)}" if ok else "no pre-quantized format can load here"
        cannot = f"; not here: {', '.join(missing)}" if missing else ""
        return bool(ok), f"{d} [{can}{cannot}]"

    def to_config(self, spec):
        return spec.options.get("config")
