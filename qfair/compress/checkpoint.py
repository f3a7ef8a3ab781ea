"""The saved form of a model quantized by :mod:`qfair.compress.model`.

A directory that transformers loads as an ordinary float checkpoint
(``save_pretrained``: the de-quantized weights, i.e. exactly what the quantized
model computes, plus config and tokenizer), with the integer form beside it:
``qfair-codes.safetensors`` holds, per quantized layer ``NAME``,
``NAME.codes_packed`` (uint8 bit stream, :func:`qfair.compress.grid.pack`),
``NAME.scale``, ``NAME.shape`` and, for an asymmetric grid, ``NAME.zero``
(uint8); its metadata holds the method, bits, group size and sym, and
``layer_bits`` (JSON, layer -> bits) for the layers whose bits differ.
:func:`verify` checks that the codes de-quantize bit for bit to the weights
transformers loaded.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from qfair.compress.errors import CompressError
from qfair.compress.grid import Grid
from qfair.compress.model import ModelQuantization
from qfair.compress.quantized import QuantizedWeight

CODES_FILE = "qfair-codes.safetensors"


def save_quantized(model: Any, tokenizer: Any, result: ModelQuantization, directory: str | Path) -> None:
    from safetensors.torch import save_file

    d = Path(directory)
    model.save_pretrained(str(d))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(d))
    tensors: dict[str, torch.Tensor] = {}
    for name, qw in result.weights.items():
        for k, t in qw.to_tensors().items():
            tensors[f"{name}.{k}"] = t.contiguous()
    g = result.grid
    meta = {"format": "qfair-codes", "version": "1", "method": result.method, "bits": str(g.bits),
            "group_size": str(g.group_size), "sym": str(g.sym).lower()}
    own = {n: qw.grid.bits for n, qw in result.weights.items() if qw.grid.bits != g.bits}
    if own:
        meta["layer_bits"] = json.dumps(own, sort_keys=True)
    save_file(tensors, str(d / CODES_FILE), metadata=meta)


def read_codes(directory: str | Path) -> tuple[Grid, dict[str, QuantizedWeight]]:
    from safetensors import safe_open

    f = Path(directory) / CODES_FILE
    if not f.is_file():
        raise CompressError(f"{f} is missing")
    with safe_open(str(f), "pt") as fh:
        meta = fh.metadata() or {}
        grid = Grid(int(meta["bits"]), int(meta["group_size"]), meta["sym"] == "true")
        own = {n: int(b) for n, b in json.loads(meta.get("layer_bits") or "{}").items()}
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for k in fh.keys():
            name, _, leaf = k.rpartition(".")
            parts.setdefault(name, {})[leaf] = fh.get_tensor(k)
    return grid, {n: QuantizedWeight.from_tensors(t, replace(grid, bits=own[n]) if n in own else grid)
                  for n, t in parts.items()}


def verify(model: Any, weights: dict[str, QuantizedWeight]) -> None:
    """Refuse a model whose quantized layers differ from their codes."""
    for name, qw in weights.items():
        w = model.get_submodule(name).weight
        if not torch.equal(w.detach(), qw.dequantize().to(w.dtype)):
            raise CompressError(f"layer {name}: the saved weights differ from their integer codes")


def stored_bytes(model: Any, weights: dict[str, QuantizedWeight]) -> dict[str, int]:
    """Bytes of each quantized module as stored: packed codes, scales, zero points, bias."""
    out = {}
    for name, qw in weights.items():
        b = getattr(model.get_submodule(name), "bias", None)
        out[name] = qw.stored_bytes() + (0 if b is None else b.numel() * b.element_size())
    return out
