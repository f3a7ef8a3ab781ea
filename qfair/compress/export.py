"""Export a quantized model as a compressed-tensors ``pack-quantized`` checkpoint,
the integer format transformers reloads (with the ``compressed-tensors``
package installed) as a quantized model.

Per quantized linear layer ``NAME`` the safetensors file holds

- ``NAME.weight_packed`` (int32, rows x ceil(in_features * bits / 32)): each
  row's codes as one little-endian bit stream, ``bits`` bits per code, least
  significant bit first, padded with zero bits to whole 32-bit words;
- ``NAME.weight_scale`` (rows x groups, the scale's float dtype);
- ``NAME.weight_zero_point`` (asymmetric grids only; int32, the zero points
  packed the same way but along the output dimension: ceil(rows * bits / 32) x
  groups);
- ``NAME.weight_shape`` (int64, ``[rows, in_features]``);

and every other tensor of the model as saved by ``save_pretrained``.
``config.json`` gets a ``quantization_config`` with ``quant_method``
``compressed-tensors``, format ``pack-quantized``, and one config group per
distinct (bits) among the layers, each naming its layers (``group`` strategy,
or ``channel`` for ``group_size=-1``).

The codes map one to one: compressed-tensors stores a signed value ``v`` in
``[-2^(b-1), 2^(b-1) - 1]`` as ``v + 2^(b-1)``, and de-quantizes ``(v - zp) *
scale`` (``zp = 0`` when symmetric). qfair's code ``q`` and zero point ``z``
in ``[0, 2^b - 1]`` stand for ``(q - z) * scale``. Taking ``v = q - 2^(b-1)``
and ``zp = z - 2^(b-1)`` (``0`` for qfair's symmetric grid, whose ``z`` is
``2^(b-1)``) gives the same differences of small integers, hence the same
products: the stored bits are qfair's codes and zero points themselves, and
the reloaded weights equal qfair's de-quantized weights bit for bit (a test).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from qfair.compress.errors import CompressError
from qfair.compress.grid import Grid, bit_stream, stream_bytes
from qfair.compress.quantized import QuantizedWeight

EXPORT_DIR = "compressed-tensors"   # the export's directory inside a qfair cache entry
FORMAT = "pack-quantized"
QUANT_METHOD = "compressed-tensors"
# the compressed-tensors release whose layout this writer follows (its own readers accept later ones)
CT_VERSION = "0.20.1"


def pack_int32_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes (rows, n; values < 2**bits) -> int32 (rows, ceil(n * bits / 32)):
    each row a little-endian bit stream, least significant bit first, padded
    with zero bits to whole 32-bit words."""
    rows, n = codes.shape
    words = (n * bits + 31) // 32
    stream = torch.nn.functional.pad(bit_stream(codes, bits), (0, words * 32 - n * bits))
    packed = stream_bytes(stream)
    if sys.byteorder == "big":  # int32 words are read in the host's byte order
        packed = packed.reshape(rows, words, 4).flip(-1).reshape(rows, words * 4)
    return packed.contiguous().view(torch.int32)


def layer_tensors(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors of one quantized layer (names without the layer prefix)."""
    out = {"weight_packed": pack_int32_rows(qw.codes, qw.grid.bits),
           "weight_scale": qw.scale.contiguous(),
           "weight_shape": torch.tensor(list(qw.codes.shape), dtype=torch.int64)}
    if not qw.grid.sym:
        z = qw.zero.to(torch.int32)
        out["weight_zero_point"] = pack_int32_rows(z.T, qw.grid.bits).T.contiguous()
    return out


def quantization_config(weights: dict[str, QuantizedWeight], ignore: list[str]) -> dict[str, Any]:
    """The ``quantization_config`` entry of config.json for these layers."""
    groups: dict[Grid, list[str]] = {}
    for name, qw in weights.items():
        groups.setdefault(qw.grid, []).append(name)
    config_groups = {}
    for i, (grid, names) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0].bits, kv[0].group_size))):
        w = {"num_bits": grid.bits, "type": "int", "symmetric": grid.sym,
             "strategy": "channel" if grid.group_size == -1 else "group",
             "group_size": None if grid.group_size == -1 else grid.group_size,
             "block_structure": None, "dynamic": False, "actorder": None, "observer": "minmax",
             "observer_kwargs": {}}
        config_groups[f"group_{i}"] = {"targets": sorted(names), "weights": w, "input_activations": None,
                                       "output_activations": None, "format": FORMAT}
    return {"quant_method": QUANT_METHOD, "format": FORMAT, "quantization_status": "compressed",
            "config_groups": config_groups, "ignore": sorted(ignore), "kv_cache_scheme": None,
            "global_compression_ratio": None, "sparsity_config": {}, "transform_config": {},
            "version": CT_VERSION}


def reload_refusal(weights: dict[str, QuantizedWeight]) -> str | None:
    """Why transformers could not reload these layers correctly (None: it can).

    transformers 5.25 reloads a pack-quantized checkpoint on one of two routes:
    de-quantizing while loading (``dequantize=True``), which decodes every dense
    layer with the *first* config group's scheme, so layers of several widths
    come out wrong; or building the compressed layout first (the default), in
    which compressed-tensors 0.20.1 gives asymmetric zero points their unpacked
    shape and then refuses the packed ones as a size mismatch. Layers of
    several widths with asymmetric grids thus have no route."""
    grids = {qw.grid for qw in weights.values()}
    if len(grids) > 1 and any(not g.sym for g in grids):
        return ("layers of several widths with sym=false: transformers decodes every layer with one scheme "
                "when it de-quantizes on load, and cannot take packed zero points otherwise")
    return None


def save_compressed_tensors(model: Any, tokenizer: Any, weights: dict[str, QuantizedWeight],
                            directory: str | Path) -> None:
    """Write ``model`` (whose quantized layers hold ``weights``' de-quantized values)
    as a compressed-tensors pack-quantized checkpoint in ``directory``; refuses
    (CompressError, nothing written) what transformers could not reload
    (:func:`reload_refusal`) and weights that are not their codes."""
    why = reload_refusal(weights)
    if why is not None:
        raise CompressError(f"compressed-tensors export: {why}")
    for name, qw in weights.items():
        w = model.get_submodule(name).weight
        if not torch.equal(w.detach(), qw.dequantize().to(w.dtype)):
            raise CompressError(f"layer {name}: the model's weights differ from their integer codes")
    state = {k: v for k, v in model.state_dict().items()
             if not (k.endswith(".weight") and k[:-len(".weight")] in weights)}
    for name, qw in weights.items():
        for leaf, t in layer_tensors(qw).items():
            state[f"{name}.{leaf}"] = t
    ignore = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in weights]
    d = Path(directory)
    model.save_pretrained(str(d), state_dict=state)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(d))
    cfg_path = d / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["quantization_config"] = quantization_config(weights, ignore)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
