"""What a loaded model weighs: bytes of its tensors and bits per weight, measured.

Sizes are the bytes of the tensors themselves, as loaded: every tensor of the
model's state (parameters, persistent buffers and the quantization states a
backend stores beside its packed weights: bitsandbytes' ``absmax`` /
``quant_map`` / ``SCB``, quanto's scales, ...), tensor subclasses (torchao,
quanto) counted by their inner tensors, tensors shared between modules (tied
embeddings) counted once. :func:`measure` adds the number of weights of the
architecture (its parameters, counted on an empty copy built on the ``meta``
device from the model's config, so that packed storage never changes the
count) and divides: ``bits_per_weight = 8 * stored_bytes / n_weights``.

Measure before the first forward pass: bitsandbytes 0.50 repacks its 4-bit
weights for the CPU kernels on the first forward, after which reading the
state corrupts the model (refused with :class:`SizeError`).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from qfair.errors import QfairError

__all__ = ["SizeError", "module_bytes", "model_bytes", "memory_bytes", "architecture_weights", "measure"]


class SizeError(QfairError):
    """The model's size cannot be measured (e.g. a bitsandbytes 4-bit model after its first CPU forward)."""


def _plain_tensors(t: Any) -> list[Any]:
    """The plain tensors holding ``t``'s data (tensor subclasses flattened)."""
    import torch

    data = t.data if isinstance(t, torch.nn.Parameter) else t
    if type(data) is not torch.Tensor and hasattr(data, "__tensor_flatten__"):
        names, _ = data.__tensor_flatten__()
        out: list[Any] = []
        for n in names:
            out.extend(_plain_tensors(getattr(data, n)))
        return out
    return [data]


def _state_tensors(module: Any) -> list[Any]:
    """Every plain tensor of ``module``'s saved state (state dict, quantization states included)."""
    for m in module.modules():
        qs = getattr(getattr(m, "weight", None), "quant_state", None)
        if qs is not None and getattr(qs, "packing_format_for_cpu", False):
            # bitsandbytes 0.50 repacks 4-bit weights for its CPU kernels on the first forward, and
            # its state_dict() then unpacks them in place, leaving a module that computes garbage
            raise SizeError("sizes of a bitsandbytes 4-bit model must be measured before its first forward "
                            "pass on the CPU (reading its state afterwards corrupts it)")
    out: list[Any] = []
    for v in module.state_dict(keep_vars=True).values():
        out.extend(_plain_tensors(v))
    return out


def _unique_bytes(tensors: Iterable[Any], seen: set | None = None) -> int:
    seen = set() if seen is None else seen
    total = 0
    for t in tensors:
        key = _key(t)
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        total += t.numel() * t.element_size()
    return total


def _key(t: Any) -> Any:
    """What identifies a tensor's storage (shared tensors count once); tensors on the
    ``meta`` device (offloaded by a device map) have no storage: the object itself."""
    if not t.numel():
        return None
    if t.device.type == "meta":
        return ("meta", id(t))
    return (t.data_ptr(), t.dtype, tuple(t.shape))


def module_bytes(module: Any) -> int:
    """Bytes of a module's saved state (see the module doc)."""
    return _unique_bytes(_state_tensors(module))


def model_bytes(model: Any, packed: dict[str, int] | None = None) -> int:
    """Bytes of a whole model's saved state, each tensor counted once.

    ``packed`` (module path -> bytes) overrides the in-memory size of modules a
    backend keeps de-quantized in memory (a GPTQ checkpoint loaded to float).
    """
    if not packed:
        return module_bytes(model)
    prefixes = tuple(p + "." for p in packed)
    rest = [t for k, v in model.state_dict(keep_vars=True).items() if not k.startswith(prefixes)
            for t in _plain_tensors(v)]
    return _unique_bytes(rest) + sum(packed.values())


def memory_bytes(model: Any) -> dict[str, int]:
    """Bytes of every tensor the loaded model holds: its state (:func:`model_bytes`
    without any override) plus non-persistent buffers (rotary tables, masks), each
    tensor once; ``offloaded`` counts those on the ``meta`` device (kept on disk or
    elsewhere by an accelerate device map), included in ``total``."""
    seen: set = set()
    state = _state_tensors(model)
    total = _unique_bytes(state, seen)
    extra = []
    for mod in model.modules():
        for name, b in mod.named_buffers(recurse=False):
            if b is not None and name in getattr(mod, "_non_persistent_buffers_set", ()):
                extra.extend(_plain_tensors(b))
    total += _unique_bytes(extra, seen)
    offloaded = sum(t.numel() * t.element_size() for t in state if t.device.type == "meta")
    return {"total": total, "offloaded": offloaded}


def architecture_weights(model: Any) -> int | None:
    """Parameters of the model's architecture, counted on an empty copy built on the
    ``meta`` device from its config (without its quantization config), tied
    parameters once; None when the architecture cannot be rebuilt that way."""
    import copy

    import torch

    try:
        cfg = copy.deepcopy(model.config)
        if getattr(cfg, "quantization_config", None) is not None:
            del cfg.quantization_config
        with torch.device("meta"):
            empty = type(model)(cfg)
        return int(sum(p.numel() for p in empty.parameters()))
    except Exception:  # noqa: BLE001 - a remote-code or unusual architecture: no count rather than a wrong one
        return None


def measure(model: Any, packed: dict[str, int] | None = None) -> dict[str, Any]:
    """The size record of a dump's manifest (``model.size``): ``n_weights`` (the
    architecture's parameters), ``stored_bytes`` (the state as the quantization
    stores it: :func:`model_bytes`, with ``packed`` bytes for modules a backend
    keeps de-quantized in memory), ``bits_per_weight``, ``memory_bytes`` (every
    tensor held in memory, :func:`memory_bytes`), ``offloaded_bytes`` and the
    bytes per dtype of the stored tensors."""
    n = architecture_weights(model)
    stored = model_bytes(model, packed)
    mem = memory_bytes(model)
    by_dtype: dict[str, int] = {}
    seen: set = set()
    for t in _state_tensors(model):
        key = _key(t)
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        d = str(t.dtype).removeprefix("torch.")
        by_dtype[d] = by_dtype.get(d, 0) + t.numel() * t.element_size()
    return {"n_weights": n, "stored_bytes": int(stored), "memory_bytes": int(mem["total"]),
            "offloaded_bytes": int(mem["offloaded"]),
            "bits_per_weight": None if not n else 8.0 * stored / n,
            "bytes_by_dtype": dict(sorted(by_dtype.items())),
            "packed_modules": len(packed or {}),
            "measured": "at load, before the first forward pass"}
