"""bitsandbytes: LLM.int8 and 4-bit (NF4, FP4) weights, quantized on load."""
from __future__ import annotations

from typing import Any

from qfair.models.backends import base, register_backend
from qfair.models.backends.base import (
    SKIP_MODULES,
    Option,
    QuantBackend,
    SpecDef,
    parse_bool,
    parse_dtype,
    parse_positive_float,
    version_tuple,
)

_BNB4 = {
    "double_quant": Option(parse_bool, False, "quantize the quantization constants too (true|false)"),
    "compute_dtype": Option(parse_dtype, "float32", "dtype of the matmul: float32|bfloat16|float16"),
    "skip_modules": SKIP_MODULES,
}


class _DropCastWarning:
    """Drops bitsandbytes' per-call 'MatMul8bitLt: inputs will be cast …' warning
    (one line per layer per forward pass); the fact is recorded in the manifest."""

    def filter(self, record: Any) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


_CAST_FILTER = _DropCastWarning()


@register_backend
class BitsAndBytes(QuantBackend):
    name = "bitsandbytes"
    distribution = "bitsandbytes"
    module = "bitsandbytes"
    loggers = ("bitsandbytes",)
    install_hint = "pip install 'bitsandbytes>=0.46'"
    specs = (
        SpecDef("bnb-int8", "bitsandbytes LLM.int8: int8 weights with outlier features in fp16",
                {"threshold": Option(parse_positive_float, 6.0, "outlier threshold on activation magnitude"),
                 "skip_modules": SKIP_MODULES}),
        SpecDef("bnb-nf4", "bitsandbytes 4-bit NormalFloat (NF4) weights", dict(_BNB4)),
        SpecDef("bnb-fp4", "bitsandbytes 4-bit float (FP4) weights", dict(_BNB4)),
    )

    def availability(self, spec: str, cuda: bool) -> tuple[bool, str]:
        v = base.dist_version("bitsandbytes")
        if v is not None and not cuda and version_tuple(v) < (0, 46):
            return False, f"bitsandbytes {v} needs CUDA; CPU support needs bitsandbytes>=0.46"
        return super().availability(spec, cuda)

    def to_config(self, spec):
        from transformers import BitsAndBytesConfig

        o = spec.options
        skip = list(o["skip_modules"]) if o.get("skip_modules") else None
        if spec.name == "bnb-int8":
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=float(o["threshold"]),
                                      llm_int8_skip_modules=skip)
        import torch

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=spec.name.split("-")[1],
                                  bnb_4bit_use_double_quant=bool(o["double_quant"]),
                                  bnb_4bit_compute_dtype=getattr(torch, o["compute_dtype"]),
                                  llm_int8_skip_modules=skip)

    def post_load(self, model, spec, extra):
        import logging

        lg = logging.getLogger("bitsandbytes.autograd._functions")
        if _CAST_FILTER not in lg.filters:
            lg.addFilter(_CAST_FILTER)
        if spec.name == "bnb-int8":
            extra["note"] = "bitsandbytes LLM.int8 casts float32 activations to float16 for its matmuls"
