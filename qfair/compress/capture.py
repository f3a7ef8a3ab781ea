"""Calibration capture: the inputs of every linear layer, block by block.

A causal LM is a stack of transformer blocks (the longest ``nn.ModuleList`` of
modules holding linear layers). Each calibration sequence is run through the
model once up to the first block, whose inputs (positional and keyword
arguments: hidden states, attention mask, rotary embeddings, ...) are kept.
Then, block by block, a :class:`BlockStream` runs the kept inputs through the
block with hooks on its linear layers (to collect statistics), lets the
caller quantize the block, and runs the inputs through the *quantized* block
to get the next block's inputs. Every layer is therefore calibrated on what
the already-quantized earlier blocks produce, as it will see at inference.

Sequences run one at a time (batch 1, no padding), so sequences of any
lengths mix without attention masks of their own.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from qfair.compress.errors import CompressError

# sink(layer name, sequence index, layer input (batch, tokens, features))
Sink = Callable[[str, int, torch.Tensor], None]


class CaptureError(CompressError):
    """The model cannot be walked block by block."""


class _Stop(Exception):
    pass


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(name, blocks)``: the longest ModuleList whose members all hold linear layers."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) and all(
                any(isinstance(s, nn.Linear) for s in b.modules()) for b in m):
            if best is None or len(m) > len(best[1]):
                best = (name, m)
    if best is None:
        raise CaptureError(f"{type(model).__name__}: no list of transformer blocks with linear layers found")
    return best


@contextlib.contextmanager
def input_hooks(layers: dict[str, nn.Module], sink: Sink, seq: list[int]) -> Iterator[None]:
    """Call ``sink(name, seq[0], input)`` before each listed layer runs."""
    handles = []
    for name, mod in layers.items():
        def hook(_m: nn.Module, args: tuple, _name: str = name) -> None:
            sink(_name, seq[0], args[0])
        handles.append(mod.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class BlockStream:
    """The inputs of the current block for each of a list of token sequences."""

    def __init__(self, model: nn.Module, first_block: nn.Module, sequences: Sequence[torch.Tensor]):
        self.inputs: list[tuple[tuple, dict[str, Any]]] = []

        def grab(_m: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            self.inputs.append((tuple(args), dict(kwargs)))
            raise _Stop

        h = first_block.register_forward_pre_hook(grab, with_kwargs=True)
        dev = next(model.parameters()).device
        try:
            with torch.no_grad():
                for ids in sequences:
                    try:
                        model(input_ids=ids.reshape(1, -1).to(dev), use_cache=False)
                    except _Stop:
                        pass
                    else:
                        raise CaptureError(f"{type(model).__name__}: its forward pass never reached the first block")
        finally:
            h.remove()

    def __len__(self) -> int:
        return len(self.inputs)

    def run(self, block: nn.Module, layers: dict[str, nn.Module] | None = None, sink: Sink | None = None,
            advance: bool = False) -> None:
        """Run every sequence through ``block``; with ``sink``, feed it the inputs
        of ``layers``; with ``advance``, the outputs become the next block's inputs.

        Without ``advance`` the block's output is not needed: when the first
        sequence called each listed layer exactly once, every later sequence
        stops as soon as each layer has had its input (e.g. before a llama
        block's ``down_proj`` and residual run)."""
        seq = [0]
        layers = layers or {}
        calls: dict[str, int] = {}
        stop_early = [False]

        def count(name: str, i: int, x: torch.Tensor) -> None:
            assert sink is not None
            sink(name, i, x)
            calls[name] = calls.get(name, 0) + 1
            if stop_early[0] and len(calls) == len(layers):
                raise _Stop

        hooks = input_hooks(layers, count, seq) if sink is not None else contextlib.nullcontext()
        with torch.no_grad(), hooks:
            for i, (args, kwargs) in enumerate(self.inputs):
                seq[0] = i
                calls.clear()
                try:
                    out = block(*args, **kwargs)
                except _Stop:
                    continue
                if i == 0 and not advance and layers and len(calls) == len(layers) \
                        and all(c == 1 for c in calls.values()):
                    stop_early[0] = True
                if advance:
                    hidden = out[0] if isinstance(out, (tuple, list)) else out
                    if args:
                        self.inputs[i] = ((hidden, *args[1:]), kwargs)
                    else:
                        self.inputs[i] = (args, {**kwargs, "hidden_states": hidden})


def model_inputs(model: nn.Module, layers: dict[str, nn.Module], sequences: Sequence[torch.Tensor],
                 sink: Sink) -> None:
    """Run whole sequences through ``model`` feeding ``sink`` the inputs of ``layers``
    (for layers outside the blocks, e.g. the output head)."""
    seq = [0]
    dev = next(model.parameters()).device
    with torch.no_grad(), input_hooks(layers, sink, seq):
        for i, ids in enumerate(sequences):
            seq[0] = i
            model(input_ids=ids.reshape(1, -1).to(dev), use_cache=False)


class SharedInputs:
    """A sink wrapper that notices layers fed the very same input tensor (q, k and
    v projections; gate and up projections) and forwards each input once, under
    the first layer's name; ``alias`` maps every layer to that name."""

    def __init__(self, sink: Sink):
        self.sink = sink
        self.alias: dict[str, str] = {}
        self._seq = -1
        self._seen: dict[int, tuple[torch.Tensor, str]] = {}

    def __call__(self, name: str, seq: int, x: torch.Tensor) -> None:
        if seq != self._seq:
            self._seq, self._seen = seq, {}   # the references kept here stop ids from being reused
        first = self._seen.get(id(x))
        owner = first[1] if first is not None and first[0] is x else name
        if self.alias.setdefault(name, owner) != owner:
            raise CaptureError(f"layer {name} shares its input with {owner} on one sequence only")
        if owner == name:
            self._seen[id(x)] = (x, name)
            self.sink(name, seq, x)
