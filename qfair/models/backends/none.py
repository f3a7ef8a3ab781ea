"""``none`` (full precision) and ``prequantized`` (a checkpoint that carries its
own quantization config, loaded as is)."""
from __future__ import annotations

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
