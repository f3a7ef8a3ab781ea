"""Teacher forcing: the rows a model gives along a continuation it did not
write (the base model's text), in one pass per batch.

Each sequence is ``prompt + continuation[:-1]``, the prompt left-padded and the
continuation right-padded, so that every prompt ends in the same column and
the ``n``-th continuation token is predicted from column ``P - 1 + n`` for
every row of the batch; the logits of the last ``T`` columns are all that is
projected onto the vocabulary. Position ids follow the attention mask, as in
generation, so a row's numbers are those of the sequence alone (up to float
rounding: tests hold them to 1e-4 nats of a step-by-step recomputation).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qfair.generation.decode import Continuation, LanguageModel, log_softmax, position_ids, scalars_of

__all__ = ["teacher_force"]

# bound on one pass's float32 logits ([B, T, V]): larger batches are split
MAX_LOGITS_BYTES = 512 * 2**20


def teacher_force(lm: LanguageModel, prompts: Sequence[Sequence[int]], conts: Sequence[Sequence[int]], *,
                  keep_rows: bool = True, store_dtype: str = "f16") -> list[Continuation]:
    """Score ``conts[i]`` after ``prompts[i]``; one :class:`Continuation` per pair
    (``stop = "reference"``), its rows and scalars for every continuation token."""
    import torch

    if len(prompts) != len(conts):
        raise ValueError("teacher_force: one continuation per prompt")
    out: list[Continuation | None] = [None] * len(prompts)
    todo = [i for i, c in enumerate(conts) if len(c)]
    for i, c in enumerate(conts):
        if not len(c):
            out[i] = Continuation([], "reference", {k: np.zeros(0, np.int64 if k in ("argmax", "rank") else
                                                               np.float32) for k in
                                                    ("logprob", "entropy", "max_logprob", "argmax", "rank")})
    vocab = int(lm.model.get_output_embeddings().weight.shape[0])
    per_seq = max(len(conts[i]) for i in todo) * vocab * 4 if todo else 1
    chunk = max(1, MAX_LOGITS_BYTES // max(per_seq, 1))
    with torch.no_grad():
        for s in range(0, len(todo), chunk):
            part = todo[s:s + chunk]
            for i, c in zip(part, _batch(lm, [prompts[i] for i in part], [conts[i] for i in part],
                                         keep_rows, store_dtype)):
                out[i] = c
    return out  # type: ignore[return-value]


def _batch(lm: LanguageModel, prompts: Sequence[Sequence[int]], conts: Sequence[Sequence[int]],
           keep_rows: bool, store_dtype: str) -> list[Continuation]:
    import torch

    from qfair.dump.writer import to_storage

    b = len(prompts)
    p_w = max(len(p) for p in prompts)
    t_w = max(len(c) for c in conts)
    width = p_w + t_w - 1
    ids = torch.full((b, width), lm.pad_id, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for r, (p, c) in enumerate(zip(prompts, conts)):
        seq = list(p) + list(c[:-1])
        ids[r, p_w - len(p):p_w - len(p) + len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[r, p_w - len(p):p_w - len(p) + len(seq)] = 1
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    logits, _ = lm.forward(ids, mask, keep=t_w, positions=position_ids(mask))
    res = []
    for r, c in enumerate(conts):
        n = len(c)
        lp = log_softmax(logits[r, :n])
        tgt = torch.tensor(list(c), dtype=torch.long, device=lp.device)
        sc = scalars_of(lp, tgt)
        nonfinite = int((~torch.isfinite(lp).all(-1)).sum())
        rows = to_storage(lp, store_dtype) if keep_rows else None
        res.append(Continuation([int(x) for x in c], "reference", sc, rows, nonfinite))
    return res
