"""Quantize every linear layer of a causal LM (except the ignored ones) with RTN
or GPTQ, in place, and keep the integer codes.

GPTQ runs block by block (:mod:`qfair.compress.capture`): the Hessian of each
layer in a block is collected on the calibration sequences as the already
quantized earlier blocks transform them, the block's layers are quantized,
and the calibration sequences advance through the quantized block. Layers
sharing one input (q/k/v, gate/up) share one Hessian. With a fairness term,
the probe pairs advance the same way and each layer's Hessian becomes
``H + alpha F`` (:mod:`qfair.compress.fair`). Linear layers outside the blocks
(an output head that is not ignored) are calibrated last, on a full forward
pass of the model whose blocks are quantized.

Per layer, the result records the reconstruction error ``mean_tokens
||(W - What) x||^2`` of the method and of RTN on the same grid (both measured
with the undamped calibration Hessian), and with pairs the same for the pair
differences and ``tr F / tr H``.
"""
from __future__ import annotations

import contextlib
import fnmatch
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from qfair.compress.capture import BlockStream, SharedInputs, decoder_blocks, model_inputs
from qfair.compress.errors import CompressError
from qfair.compress.fair import PairAccumulator, fair_hessian, pair_sequences
from qfair.compress.gptq import DEFAULT_BLOCK_SIZE, DEFAULT_DAMPENING, gptq_quantize
from qfair.compress.grid import Grid, GridError, common_group_sizes
from qfair.compress.hessian import HessianAccumulator, row_errors
from qfair.compress.quantized import QuantizedWeight
from qfair.compress.rtn import rtn_quantize

METHODS = ("rtn", "gptq")


@dataclass
class ModelQuantization:
    method: str
    grid: Grid                  # the model's grid; a layer's own bits may differ (layer_grids)
    weights: dict[str, QuantizedWeight] = field(default_factory=dict)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    layer_grids: dict[str, Grid] = field(default_factory=dict)
    profile: dict[str, float] = field(default_factory=dict)  # seconds per phase of the build (PHASES)


# where a GPTQ build spends its time (ModelQuantization.profile); "hessian" is part of "capture"
PHASES = ("inputs", "capture", "hessian", "pairs", "solve", "errors", "advance")


class _Clock:
    """Seconds summed per phase: ``with clock("solve"): ...``."""

    def __init__(self, totals: dict[str, float]):
        self.totals = totals
        for p in PHASES:
            totals.setdefault(p, 0.0)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.totals[phase] += time.perf_counter() - t


def resolve_layer_bits(names: Sequence[str], rules: Sequence[tuple[str, int]]) -> dict[str, int]:
    """Each layer's bits from ``(pattern, bits)`` rules, the first matching rule
    winning (a pattern matches as ``ignore=`` does: a name, a dotted suffix or a
    glob); layers no rule matches are left out. Refuses a rule that matches no layer."""
    out: dict[str, int] = {}
    for pattern, bits in rules:
        hit = [n for n in names if is_ignored(n, (pattern,))]
        if not hit:
            raise CompressError(f"layer_bits: pattern {pattern!r} matches no quantized layer")
        for n in hit:
            out.setdefault(n, int(bits))
    return out


def layer_grids(names: Sequence[str], grid: Grid, layer_bits: Mapping[str, int] | None = None) -> dict[str, Grid]:
    """Every layer's grid: ``grid`` with the layer's own bits where ``layer_bits`` names it."""
    lb = dict(layer_bits or {})
    unknown = sorted(set(lb) - set(names))
    if unknown:
        raise CompressError(f"layer_bits names layers that are not quantized: {', '.join(unknown[:5])}")
    return {n: replace(grid, bits=int(lb[n])) if n in lb else grid for n in names}


def is_ignored(name: str, ignore: Sequence[str]) -> bool:
    return any(name == i or name.endswith("." + i) or fnmatch.fnmatchcase(name, i) for i in ignore)


def target_linears(model: nn.Module, ignore: Sequence[str] = ()) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not is_ignored(n, ignore)}


def check_grid(model: nn.Module, grid: Grid, ignore: Sequence[str] = ()) -> dict[str, nn.Linear]:
    """The layers to quantize; refuses a group size that does not divide one of them."""
    layers = target_linears(model, ignore)
    if not layers:
        raise CompressError("no linear layer left to quantize (check ignore=)")
    for name, m in layers.items():
        if grid.group_size != -1 and m.in_features % grid.group_size:
            sizes = ", ".join(map(str, common_group_sizes([x.in_features for x in layers.values()])))
            raise GridError(f"group_size={grid.group_size} does not divide the input width of {name} "
                            f"({m.in_features}); group sizes that divide every quantized layer: -1, {sizes}")
    return layers


def _set_weight(mod: nn.Linear, qw: QuantizedWeight) -> None:
    w = qw.dequantize().to(mod.weight.dtype)
    # a fresh Parameter: also unties an output head that shared the embedding's weight
    mod.weight = nn.Parameter(w, requires_grad=False)


def _say(progress: Callable[[str], None] | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def quantize_model(model: nn.Module, method: str, grid: Grid, *, calibration: Sequence[torch.Tensor] = (),
                   pairs: Sequence[tuple[torch.Tensor, torch.Tensor]] = (), alpha: float = 0.0,
                   ignore: Sequence[str] = ("lm_head",), dampening: float = DEFAULT_DAMPENING,
                   act_order: bool = False, block_size: int = DEFAULT_BLOCK_SIZE,
                   progress: Callable[[str], None] | None = None,
                   layer_bits: Mapping[str, int] | None = None) -> ModelQuantization:
    """Quantize ``model`` in place (its linear layers get the de-quantized weights)
    and return the codes and per-layer statistics. ``calibration``: token id
    sequences (GPTQ); ``pairs``: (first, second) token id sequences for the
    fairness term, used when ``alpha > 0``. ``layer_bits``: bits of single layers
    (by full name) that differ from ``grid.bits``."""
    if method not in METHODS:
        raise CompressError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    fair_hessian(torch.zeros(1, 1), None, alpha)  # refuses alpha < 0
    t0 = time.perf_counter()
    layers = check_grid(model, grid, ignore)
    grids = layer_grids(list(layers), grid, layer_bits)
    out = ModelQuantization(method, grid, layer_grids=grids)
    if method == "rtn":
        for name, m in layers.items():
            qw = rtn_quantize(m.weight.detach().float(), grids[name], name)
            out.weights[name] = qw
            out.layers[name] = {"weight_error": float(((m.weight.detach().double() - qw.dequantize().double()) ** 2).sum())}
            _set_weight(m, qw)
        out.seconds = time.perf_counter() - t0
        return out
    if not calibration:
        raise CompressError("gptq needs calibration sequences")
    use_pairs = alpha > 0 and len(pairs) > 0
    if alpha > 0 and not pairs:
        raise CompressError("fair > 0 needs probe pairs")
    was_training = model.training
    model.eval()
    clock = _Clock(out.profile)
    prefix, blocks = decoder_blocks(model)
    with clock("inputs"):
        calib = BlockStream(model, blocks[0], calibration)
    pair_stream = None
    starts: list[int] = []
    if use_pairs:
        seqs, starts = pair_sequences(pairs)
        with clock("pairs"):
            pair_stream = BlockStream(model, blocks[0], seqs)
    done: set[str] = set()

    def accumulate(accs: dict[str, HessianAccumulator]) -> SharedInputs:
        def add(n: str, _s: int, x: torch.Tensor) -> None:
            with clock("hessian"):
                accs[n].add(x)
        return SharedInputs(add)

    for i, block in enumerate(blocks):
        inside = {n: m for n, m in layers.items() if n.startswith(f"{prefix}.{i}.")}
        if inside:
            _say(progress, f"block {i + 1}/{len(blocks)}: {len(inside)} layers")
            accs = {n: HessianAccumulator(m.in_features) for n, m in inside.items()}
            shared = accumulate(accs)
            with clock("capture"):
                calib.run(block, inside, shared)
            pacc = PairAccumulator(starts) if use_pairs else None
            if pair_stream is not None:
                with clock("pairs"):
                    pair_stream.run(block, inside, pacc)
            _quantize_layers(inside, {n: accs[shared.alias[n]] for n in inside}, pacc, out, grids, alpha,
                             dampening, act_order, block_size, clock)
            done |= set(inside)
        last = i == len(blocks) - 1 and len(done) == len(layers)
        if not last:  # the last block's outputs feed no quantized layer
            with clock("advance"):
                calib.run(block, advance=True)
            if pair_stream is not None:
                with clock("pairs"):
                    pair_stream.run(block, advance=True)
    del calib, pair_stream
    rest = {n: m for n, m in layers.items() if n not in done}
    if rest:
        _say(progress, f"{len(rest)} layers outside the blocks: {', '.join(rest)}")
        accs = {n: HessianAccumulator(m.in_features) for n, m in rest.items()}
        with clock("capture"):
            model_inputs(model, rest, calibration, lambda n, s, x: accs[n].add(x))
        pacc = None
        if use_pairs:
            seqs, starts = pair_sequences(pairs)
            pacc = PairAccumulator(starts)
            with clock("pairs"):
                model_inputs(model, rest, seqs, pacc)
        _quantize_layers(rest, accs, pacc, out, grids, alpha, dampening, act_order, block_size, clock)
    model.train(was_training)
    out.weights = {n: out.weights[n] for n in layers}
    out.layers = {n: out.layers[n] for n in layers}
    out.seconds = time.perf_counter() - t0
    return out


def _quantize_layers(mods: dict[str, nn.Linear], accs: dict[str, HessianAccumulator], pacc: PairAccumulator | None,
                     out: ModelQuantization, grids: dict[str, Grid], alpha: float, dampening: float,
                     act_order: bool, block_size: int, clock: _Clock) -> None:
    """GPTQ on ``mods``. Layers that read the same input (one Hessian) and share a
    grid are solved as one matrix, their rows stacked: every step of the solver
    works row by row, so this is each layer's own solve, with one inverse Cholesky
    factor and one column loop instead of one per layer."""
    groups: dict[tuple[int, Grid], list[str]] = {}
    for name in mods:
        groups.setdefault((id(accs[name]), grids[name]), []).append(name)
    for (_, grid), names in groups.items():
        acc = accs[names[0]]
        h = acc.hessian()
        f = pacc.hessian(names[0]) if pacc is not None else None
        ws = [mods[n].weight.detach().float() for n in names]
        w = ws[0] if len(ws) == 1 else torch.cat(ws)
        with clock("solve"):
            qw = gptq_quantize(w, fair_hessian(h, f, alpha), grid, dampening=dampening, act_order=act_order,
                               block_size=block_size, layer=" + ".join(names))
        with clock("errors"):
            rq = rtn_quantize(w, grid, names[0])
            # the four errors of every layer from one float64 product per Hessian
            delta = torch.cat([w - qw.dequantize(), w - rq.dequantize()]).to(torch.float64)
            per_row = {"h": row_errors(delta, h)}
            if f is not None:
                per_row["f"] = row_errors(delta, f)
        r0, rows = 0, w.shape[0]
        for name, wl in zip(names, ws):
            r1 = r0 + wl.shape[0]
            part = QuantizedWeight(qw.codes[r0:r1].contiguous(), qw.scale[r0:r1].contiguous(),
                                   qw.zero[r0:r1].contiguous(), grid) if len(names) > 1 else qw
            stats = {"error": _sum(per_row["h"][r0:r1]), "rtn_error": _sum(per_row["h"][rows + r0:rows + r1]),
                     "tokens": acc.count}
            if f is not None:
                stats.update({"fair_error": _sum(per_row["f"][r0:r1]),
                              "fair_rtn_error": _sum(per_row["f"][rows + r0:rows + r1]),
                              "fair_trace_ratio": float(torch.trace(f) / torch.trace(h))})
            out.weights[name] = part
            out.layers[name] = stats
            _set_weight(mods[name], part)
            r0 = r1


def _sum(x: torch.Tensor) -> float:
    return float(x.sum())


def stderr_progress(msg: str) -> None:
    print(f"qfair: {msg}", file=sys.stderr, flush=True)
