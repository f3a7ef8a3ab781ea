"""Removing whole decoder blocks.

A dropped block is taken out of the model's block list; the residual stream
goes straight from the block before it to the block after it (each block adds
its output to the stream it receives, so removing one is the identity on the
stream). The config's ``num_hidden_layers`` (and a per-layer ``layer_types``
list, when the config has one) shrinks to the kept blocks, and every kept
block's ``layer_idx`` (its slot in the key/value cache) is renumbered 0..n-1 so
that generation with a cache still works.

``fraction=F`` drops ``round(F · L)`` blocks (half up): the deepest ones
except the last block, following the observation that deep blocks but the
final one matter least (Gromov et al. 2024, "The Unreasonable Ineffectiveness
of the Deeper Layers").
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from qfair.pruning import PruningError


def decoder_blocks(model: Any) -> tuple[Any, str, Any]:
    """``(parent module, attribute name, ModuleList)`` of the decoder blocks: the
    ModuleList whose length is the config's number of hidden layers."""
    import torch

    cfg = text_config(model.config)
    n = int(cfg.num_hidden_layers)
    for mod in model.modules():
        for attr, child in mod.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == n:
                return mod, attr, child
    raise PruningError(f"could not find the {n} decoder blocks of {type(model).__name__}")


def text_config(cfg: Any) -> Any:
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def fraction_to_drop(fraction: float, n_layers: int) -> list[int]:
    """The blocks ``fraction=F`` drops (see the module doc)."""
    k = int(math.floor(fraction * n_layers + 0.5))
    if k < 1:
        raise PruningError(f"fraction={fraction} of {n_layers} blocks drops none (it rounds to 0 blocks)")
    if k >= n_layers:
        raise PruningError(f"fraction={fraction} of {n_layers} blocks drops every block; at least one must stay")
    return list(range(n_layers - 1 - k, n_layers - 1))


def check_drop(indices: Sequence[int], n_layers: int) -> list[int]:
    """Sorted unique indices, refused when out of range or covering every block."""
    bad = [i for i in indices if not 0 <= i < n_layers]
    if bad:
        raise PruningError(f"drop={'+'.join(map(str, indices))}: block {bad[0]} is out of range "
                           f"(the model has blocks 0..{n_layers - 1})")
    out = sorted(set(indices))
    if len(out) >= n_layers:
        raise PruningError(f"drop={'+'.join(map(str, indices))} removes every one of the {n_layers} blocks; "
                           "at least one must stay")
    return out


def drop_blocks(model: Any, indices: Sequence[int]) -> list[int]:
    """Remove the blocks ``indices`` in place (see the module doc); returns the kept
    original indices."""
    import torch

    parent, attr, blocks = decoder_blocks(model)
    drop = set(check_drop(indices, len(blocks)))
    kept = [i for i in range(len(blocks)) if i not in drop]
    new = torch.nn.ModuleList([blocks[i] for i in kept])
    setattr(parent, attr, new)
    for new_idx, block in enumerate(new):
        for mod in block.modules():
            if isinstance(getattr(mod, "layer_idx", None), int):
                mod.layer_idx = new_idx
    for cfg in {id(c): c for c in (model.config, text_config(model.config))}.values():
        cfg.num_hidden_layers = len(kept)
        types = getattr(cfg, "layer_types", None)
        if isinstance(types, (list, tuple)) and len(types) == len(blocks):
            cfg.layer_types = [types[i] for i in kept]
    return kept
