"""One calibration pass: the unpruned model run over the calibration texts with
a forward pre-hook on each layer to be pruned (what Wanda's norms and
SparseGPT's Hessians are both gathered by)."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def hooked_pass(model: Any, linears: dict[str, Any], batches: Iterable[Any],
                make_hook: Callable[[str], Callable[..., None]],
                before_batch: Callable[[], None] | None = None) -> int:
    """Forward each ``input_ids`` tensor of ``batches`` (shape (1, T): one text at
    a time, so no padding is counted) with ``make_hook(name)`` as a forward
    pre-hook on every layer of ``linears``; the tokens seen. ``before_batch`` runs
    before each forward. The hooks are removed whatever happens."""
    import torch

    hooks = [m.register_forward_pre_hook(make_hook(n)) for n, m in linears.items()]
    tokens = 0
    dev = model.get_input_embeddings().weight.device
    try:
        with torch.inference_mode():
            for ids in batches:
                if before_batch is not None:
                    before_batch()
                model(input_ids=ids.to(dev), use_cache=False)
                tokens += int(ids.numel())
    finally:
        for h in hooks:
            h.remove()
    return tokens
