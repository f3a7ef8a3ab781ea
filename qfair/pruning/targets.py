"""Which linear layers a pruner touches.

Every ``torch.nn.Linear`` of the model except those named in ``ignore``. A
name in ``ignore`` matches a module whose full name equals it, ends with
``.NAME`` (``down_proj`` matches every block's down projection) or lies inside
it (``model.layers.3`` keeps a whole block). Embeddings are not linear layers
and are never pruned; the output head is ignored by default by the specs.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qfair.pruning import PruningError


def is_ignored(name: str, ignore: Sequence[str]) -> bool:
    return any(name == i or name.endswith("." + i) or name.startswith(i + ".") for i in ignore)


def prunable_linears(model: Any, ignore: Sequence[str] = ("lm_head",)) -> dict[str, Any]:
    """``{module name: nn.Linear}`` of the layers to prune, in model order.

    Refuses (PruningError) an output head whose weight is tied to the input
    embeddings: pruning it would prune the embeddings too.
    """
    import torch

    out = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not is_ignored(n, ignore)}
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None:
        for n, m in out.items():
            if m.weight.data_ptr() == emb.weight.data_ptr():
                raise PruningError(f"module {n!r} shares its weight with the input embeddings (tied); "
                                   f"embeddings are never pruned: add {n.rpartition('.')[2]} to ignore=")
    return out  # may be empty: every layer ignored (a recommendation may keep every unit) prunes nothing


def check_widths(linears: dict[str, Any], m: int) -> None:
    """An N:M pattern needs every pruned layer's input width to be a multiple of M."""
    for n, lin in linears.items():
        if lin.in_features % m:
            raise PruningError(f"pattern N:{m} needs input widths that are multiples of {m}; {n} has "
                               f"{lin.in_features} (add it to ignore= or use another pattern)")
