"""Model loading and quantization for ``qfair dump``.

::

    from qfair.models import load_model
    lm = load_model()                                   # embedded SmolLM2-135M, full precision
    lm = load_model("smollm2-135m", quant="bnb-nf4:double_quant=true")
    lm = load_model("/path/to/checkpoint", quant="quanto-int8", dtype="bfloat16")
    lm.model, lm.tokenizer, lm.device, lm.vocab_size, lm.manifest()

The quantization spec grammar is documented in :mod:`qfair.models.quant`;
``available_quant_specs()`` says which specs work on this machine.  Importing
this package imports neither torch nor transformers.
"""
from __future__ import annotations

from qfair.models.quant import (
    ModelError,
    QuantSpec,
    available_quant_specs,
    parse_quant_spec,
    quant_spec_names,
)

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "ModelError",
    "ModelSource",
    "QuantSpec",
    "SPEC_NAMES",
    "available_quant_specs",
    "embedded_gguf_path",
    "load_model",
    "parse_quant_spec",
    "quant_spec_names",
    "resolve_model",
    "vocab_hash",
]

_LOADING = {"DEFAULT_MODEL", "LoadedModel", "ModelSource", "embedded_gguf_path", "load_model",
            "resolve_model", "vocab_hash"}


def __getattr__(name: str):
    if name == "SPEC_NAMES":
        return tuple(quant_spec_names())
    if name in _LOADING:
        from qfair.models import loading

        value = getattr(loading, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qfair.models' has no attribute {name!r}")
