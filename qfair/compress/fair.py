"""The fairness term: keep the quantization error small along the directions in
which a layer's input differs between the two sentences of a bias pair.

For a layer with weights ``W`` and a quantized ``What``, GPTQ minimises
``E_tokens ||(W - What) x||^2``, i.e. uses the Hessian ``H = 2 X X^T / n``. For
pairs of sentences (stereotypical / anti-stereotypical) with pooled layer
inputs ``s_i`` and ``a_i`` and ``d_i = s_i - a_i``, the fairness term is
``E_pairs ||(W - What) d_i||^2``: the change, caused by quantization, of the
*difference* between the layer's outputs on the two sentences. Its Hessian is
``F = 2 D D^T / m`` (``m`` pairs), and GPTQ is run with

    H_alpha = H + alpha * F,

each term normalised by its own count (tokens, pairs), so that ``alpha`` weighs
a mean pair against a mean token. ``alpha = 0`` leaves ``H`` untouched, bit for
bit. ``F`` has rank at most ``m``: it adds weight only along the pair-difference
directions, and GPTQ's error propagation then moves rounding error away from them.

Alignment of pairs of unequal length: each sentence's layer inputs are
mean-pooled over its tokens *after the longest common token prefix of the
pair* (a causal model computes identical inputs on that prefix, so those
positions add nothing but dilution), keeping at least the last token of each
sentence. Pairs whose token sequences are identical are dropped.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from qfair.compress.errors import CompressError


class FairnessError(CompressError):
    """Bad fairness settings or pairs."""


def pooling_starts(first: torch.Tensor, second: torch.Tensor) -> tuple[int, int]:
    """Where mean-pooling starts in each sentence of a pair: after their longest
    common prefix, at the last token at the latest."""
    a, b = first.reshape(-1), second.reshape(-1)
    n = min(a.numel(), b.numel())
    lcp = int((a[:n] != b[:n]).int().argmax()) if bool((a[:n] != b[:n]).any()) else n
    return min(lcp, a.numel() - 1), min(lcp, b.numel() - 1)


def pair_sequences(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[list[torch.Tensor], list[int]]:
    """The sequences to run (first, second, first, second, ...) and the pooling
    start of each; identical pairs are dropped. Raises if no pair is left."""
    seqs: list[torch.Tensor] = []
    starts: list[int] = []
    for s, a in pairs:
        if s.numel() == a.numel() and torch.equal(s.reshape(-1), a.reshape(-1)):
            continue
        i, j = pooling_starts(s, a)
        seqs += [s.reshape(-1), a.reshape(-1)]
        starts += [i, j]
    if not seqs:
        raise FairnessError("fair_probes: no pair of distinct sentences to build the fairness term from")
    return seqs, starts


class PairAccumulator:
    """Pooled inputs of each layer for the pair sequences; :meth:`hessian` gives ``F``."""

    def __init__(self, starts: Sequence[int]):
        self.starts = list(starts)
        self.pooled: dict[str, list[torch.Tensor | None]] = {}

    def __call__(self, name: str, seq: int, x: torch.Tensor) -> None:
        rows = self.pooled.setdefault(name, [None] * len(self.starts))
        x2 = x.detach().reshape(-1, x.shape[-1])
        rows[seq] = x2[self.starts[seq]:].to(torch.float64).mean(dim=0)

    def differences(self, name: str) -> torch.Tensor:
        """``D`` (pairs, features): pooled first sentence minus pooled second."""
        rows = self.pooled[name]
        if any(r is None for r in rows):
            raise FairnessError(f"layer {name}: not every pair sentence reached it")
        p = torch.stack(rows)  # type: ignore[arg-type]
        return p[0::2] - p[1::2]

    def hessian(self, name: str) -> torch.Tensor:
        d = self.differences(name)
        return 2.0 * d.T @ d / d.shape[0]


def fair_hessian(h: torch.Tensor, f: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """``H + alpha F``; exactly ``h`` when ``alpha == 0`` or there is no ``F``."""
    if alpha < 0:
        raise FairnessError(f"fair={alpha!r}: expected a number >= 0")
    if alpha == 0 or f is None:
        return h
    return h + alpha * f
