"""``mixed``: two specs in one model, for backends that allow one precision per
model (bitsandbytes cannot mix 4-bit and 8-bit layers in one config)::

    mixed:base=bnb-nf4,high=bnb-int8,modules=model.layers.3+model.layers.7

The model is loaded twice, with ``base`` and with ``high``; the named modules
(whole blocks or single layers) of the ``high`` copy then replace those of
the ``base`` copy, so each module is exactly what its own spec makes of it.
An inner spec's options are separated by ``;`` (``base=bnb-nf4:double_quant=true;compute_dtype=bfloat16``).
Loading holds both copies in memory for a moment.
"""
from __future__ import annotations

from typing import Any

from qfair.models.backends import register_backend
from qfair.models.backends.base import Option, QuantBackend, SpecDef, parse_modules


def _inner(v: str) -> str:
    from qfair.models.quant import ModelError, parse_quant_spec

    try:
        s = parse_quant_spec(v.strip().replace(";", ","))
    except ModelError as e:
        raise ValueError(str(e)) from None
    if s.name in ("mixed", "prequantized"):
        raise ValueError(f"an inner spec cannot be {s.name!r}")
    return str(s).replace(",", ";")


def inner_spec(text: str) -> Any:
    from qfair.models.quant import parse_quant_spec

    return parse_quant_spec(text.replace(";", ","))


@register_backend
class Mixed(QuantBackend):
    name = "mixed"
    builds_model = True
    specs = (SpecDef("mixed", "two specs in one model: MODULES as HIGH makes them, the rest as BASE "
                              "(two loads, modules transplanted)",
                     {"base": Option(_inner, None, "the spec of every other module (options joined by ';')"),
                      "high": Option(_inner, "none", "the spec of the listed modules (none: full precision)"),
                      "modules": Option(parse_modules, None, "modules (blocks or layers) taken from HIGH, "
                                                             "joined by '+'")}),)

    def to_config(self, spec: Any) -> Any:
        o = spec.options
        return {"quant_method": "qfair-mixed", "base": o.get("base"), "high": o.get("high"),
                "modules": list(o.get("modules") or ())}

    def load(self, spec: Any, request: Any) -> Any:
        from qfair.models.loading import LoadedModel
        from qfair.models.quant import ModelError

        o = spec.options
        if not o.get("base") or not o.get("modules"):
            raise ModelError(f"quantization spec {str(spec)!r}: 'mixed' needs base=SPEC and modules=A+B")
        base_spec, high_spec = inner_spec(o["base"]), inner_spec(o["high"])
        if not base_spec.is_quantized:
            raise ModelError(f"quantization spec {str(spec)!r}: base must quantize (use skip lists for float)")
        base = request.load(base_spec)
        high = request.load(high_spec)
        names = list(o["modules"])
        for n in names:
            try:
                mod = high.model.get_submodule(n)
                parent, _, child = n.rpartition(".")
                p = base.model.get_submodule(parent) if parent else base.model
            except AttributeError:
                raise ModelError(f"quantization spec {str(spec)!r}: the model has no module {n!r}") from None
            if child not in p._modules:
                raise ModelError(f"quantization spec {str(spec)!r}: the model has no module {n!r}")
            p._modules[child] = mod
        packed = {}
        inside = tuple(n + "." for n in names)

        def taken(m: str) -> bool:
            return m in names or m.startswith(inside)

        packed.update({m: b for m, b in (base.extra.get("packed_bytes") or {}).items() if not taken(m)})
        packed.update({m: b for m, b in (high.extra.get("packed_bytes") or {}).items() if taken(m)})
        extra = {"trust_remote_code": base.extra.get("trust_remote_code", False),
                 "modules_not_converted": base.extra.get("modules_not_converted"),
                 "quant_details": {"base": base.manifest()["quantization"], "high": high.manifest()["quantization"],
                                   "modules": names}}
        if packed:
            extra["packed_bytes"] = packed
        return LoadedModel(base.model, base.tokenizer, base.device, spec, base.source, base.requested_dtype,
                           base.checkpoint_path, base.from_cache, base.load_seconds + high.load_seconds, extra)
