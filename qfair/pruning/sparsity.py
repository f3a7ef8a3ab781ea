"""Measuring sparsity: zeros of the weights a model actually computes with.

Every linear layer (``torch.nn.Linear`` and the quantized subclasses backends
put in its place) is counted on its *effective* weight: a plain float weight
as is; a bitsandbytes 4-bit weight de-quantized; an int8 weight by its integer
codes (a code 0 is a weight 0); a tensor subclass (quanto, torchao) through its
``dequantize()``. ``overall`` sums every linear layer except the output head
(whose weight is often the input embedding). Weights offloaded to the ``meta``
device cannot be read and are listed under ``unmeasured``.

Measure before the first forward pass (bitsandbytes repacks 4-bit weights for
its CPU kernels on the first forward).
"""
from __future__ import annotations

from typing import Any


def effective_weight(module: Any) -> Any:
    """The weight ``module`` computes with, as a plain tensor (see the module doc)."""
    import torch

    w = module.weight
    qs = getattr(w, "quant_state", None)
    if qs is not None:  # bitsandbytes 4-bit
        import bitsandbytes.functional as bf

        return bf.dequantize_4bit(w.data, qs)
    data = w.data if isinstance(w, torch.nn.Parameter) else w
    if type(data) is not torch.Tensor and hasattr(data, "dequantize"):
        return data.dequantize()
    return data


def count_zeros(t: Any) -> int:
    import torch

    return int(torch.count_nonzero(t == 0))


def measure_sparsity(model: Any) -> dict[str, Any]:
    """``{"overall": zeros/weights over the linear layers but the output head,
    "zeros", "weights", "layers": {name: {"zeros", "weights", "sparsity"}},
    "unmeasured": [names]}``."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    layers: dict[str, dict[str, Any]] = {}
    unmeasured: list[str] = []
    zeros = total = 0
    with torch.no_grad():
        for name, mod in model.named_modules():
            if not isinstance(mod, torch.nn.Linear) or getattr(mod, "weight", None) is None:
                continue
            if mod.weight.device.type == "meta":
                unmeasured.append(name)
                continue
            w = effective_weight(mod)
            z, n = count_zeros(w), int(w.numel())
            layers[name] = {"zeros": z, "weights": n, "sparsity": z / n if n else 0.0}
            if mod is not head:
                zeros += z
                total += n
    return {"overall": zeros / total if total else None, "zeros": zeros, "weights": total,
            "layers": layers, "unmeasured": unmeasured,
            "counted": "zeros of each linear layer's effective (de-quantized) weight; overall excludes the "
                       "output head"}
