"""Multiple-choice scoring by the rules of lm-evaluation-harness, with the shared
context computed once per example.

Rules (docs/metrics.md, "Scoring"):

- continuation = target_delimiter + choice; trailing whitespace of the context
  moves to the front of the continuation;
- ``context + continuation`` is tokenised whole and ``context`` alone (with
  the tokenizer's default special tokens, as lm-eval 0.4 does); the
  continuation tokens are the tail of the whole encoding beyond the context's
  length (so the model input is ``context_enc + tail``, exactly as lm-eval);
- an empty context becomes the BOS token (EOS when the tokenizer has no BOS) and
  the continuation is tokenised alone, without special tokens;
- loglik = sum of float32 log-softmax values of the continuation tokens;
  is_greedy = every continuation token is the argmax of its row.

Work sharing: every choice of an example has the same ``context_enc`` prefix, so
the model runs once over ``context_enc[:-1]`` (keeping its KV cache) and then
once over a right-padded batch of ``[context_enc[-1]] + cont[:-1]`` per choice
with that cache repeated along the batch. ``score_naive`` is the plain
full-sequence computation used as the oracle in tests.

torch is imported lazily (inside functions) so that importing this module from
a reader-only install stays cheap.
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "EncodedExample",
    "ChoiceScore",
    "Scorer",
    "split_whitespace",
    "encode_pair",
    "encode_example",
    "prefix_token_id",
    "token_scalars",
    "tokenizer_fingerprint",
]


# ---------------------------------------------------------------------------
# text -> tokens
# ---------------------------------------------------------------------------

def split_whitespace(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing whitespace to the front of the continuation."""
    stripped = context.rstrip()
    n_spaces = len(context) - len(stripped)
    if n_spaces > 0:
        return stripped, context[-n_spaces:] + continuation
    return context, continuation


def _encode(tokenizer: Any, text: str, add_special_tokens: bool | None = None) -> list[int]:
    """lm-eval's ``tok_encode``: the tokenizer's own default for special tokens
    (``add_special_tokens=None``; e.g. Llama tokenizers prepend BOS, SmolLM2's
    adds nothing), unless the text already starts with the prefix token's text;
    ``True``/``False`` force it (lm-eval's ``add_bos_token``)."""
    if add_special_tokens is None:
        prefix = _prefix_text(tokenizer)
        if prefix and text.startswith(prefix):
            return list(tokenizer.encode(text, add_special_tokens=False))
        return list(tokenizer.encode(text))
    return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))


def _prefix_text(tokenizer: Any) -> str | None:
    try:
        return tokenizer.decode(prefix_token_id(tokenizer))
    except (ValueError, TypeError, AttributeError):
        return None


def prefix_token_id(tokenizer: Any) -> int:
    """The token that stands in for an empty context: BOS, else EOS."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        return int(bos)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("tokenizer has neither a BOS nor an EOS token; cannot score an empty context")
    return int(eos)


def encode_pair(tokenizer: Any, context: str, continuation: str,
                add_special_tokens: bool | None = None) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) exactly as lm-evaluation-harness
    (0.4.x ``loglikelihood`` / ``_encode_pair``) builds them."""
    if context == "":
        cont = list(tokenizer.encode(continuation, add_special_tokens=False))
        prefix = prefix_token_id(tokenizer)
        if cont and cont[0] == prefix:  # the text itself starts with the prefix token
            return cont[:1], cont[1:]
        return [prefix], cont
    context, continuation = split_whitespace(context, continuation)
    whole = _encode(tokenizer, context + continuation, add_special_tokens)
    ctx = _encode(tokenizer, context, add_special_tokens)
    return ctx, whole[len(ctx):]


@dataclass
class EncodedExample:
    """One example's token ids: the shared context and each choice's continuation."""

    context_enc: list[int]
    conts: list[list[int]]

    @property
    def n_rows(self) -> int:
        return sum(len(c) for c in self.conts)


def encode_example(tokenizer: Any, context: str, choices: Sequence[str],
                   target_delimiter: str = " ", add_special_tokens: bool | None = None) -> EncodedExample:
    """Encode one multiple-choice example (continuation = delimiter + choice).

    The context tokens do not depend on the choice (the whitespace rule only
    looks at the context), so one ``context_enc`` serves every choice.
    """
    ctx_enc: list[int] | None = None
    conts: list[list[int]] = []
    for choice in choices:
        c_enc, cont = encode_pair(tokenizer, context, f"{target_delimiter}{choice}", add_special_tokens)
        if ctx_enc is None:
            ctx_enc = c_enc
        elif c_enc != ctx_enc:  # pragma: no cover - impossible by construction
            raise AssertionError("context encoding differs between choices")
        conts.append(cont)
    if ctx_enc is None:
        ctx_enc = ([prefix_token_id(tokenizer)] if context == ""
                   else _encode(tokenizer, split_whitespace(context, "")[0], add_special_tokens))
    return EncodedExample(ctx_enc, conts)


# ---------------------------------------------------------------------------
# per-token scalars
# ---------------------------------------------------------------------------

def token_scalars(logprobs: Any, targets: Any) -> dict[str, Any]:
    """Cheap per-token scalars from float32 log-softmax rows ``[n, V]`` (torch).

    Returns torch tensors: logprob (of the target), entropy, max_logprob,
    argmax (first maximum), rank = 1 + #{v : lp[v] > lp[y]}.
    """
    import torch

    lp = logprobs
    tgt = targets.view(-1, 1)
    tlp = lp.gather(1, tgt).squeeze(1)
    p = lp.exp()
    # p * lp with the 0 * -inf = 0 convention (a NaN row stays NaN)
    plogp = torch.where(p == 0, torch.zeros((), dtype=lp.dtype), p * lp)
    entropy = -plogp.sum(-1)
    max_lp = lp.amax(-1)
    argmax = torch.argmax(lp, dim=-1)  # the first maximum
    rank = 1 + (lp > tlp.unsqueeze(1)).sum(-1)
    return {"logprob": tlp, "entropy": entropy, "max_logprob": max_lp, "argmax": argmax, "rank": rank}


@dataclass
class ChoiceScore:
    """One (example, choice): its log-likelihood and per-token data."""

    loglik: float
    is_greedy: bool
    targets: np.ndarray  # int64 [n]
    logprob: np.ndarray  # float32 [n]
    entropy: np.ndarray  # float32 [n]
    max_logprob: np.ndarray  # float32 [n]
    argmax: np.ndarray  # int64 [n]
    rank: np.ndarray  # int64 [n]
    rows: Any = field(default=None, repr=False)  # torch float32 [n, V] log-softmax rows, when kept

    @property
    def n_tokens(self) -> int:
        return int(self.targets.shape[0])


def _choice_score(logits: Any, targets: Any, keep_rows: bool) -> ChoiceScore:
    import torch

    # float32 log-softmax (float64 kept when the model itself runs in float64)
    lp = torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)
    s = token_scalars(lp, targets)
    tlp = s["logprob"]
    return ChoiceScore(
        loglik=float(tlp.double().sum()),
        is_greedy=bool((s["argmax"] == targets).all()),
        targets=targets.cpu().numpy().astype(np.int64),
        logprob=tlp.cpu().numpy().astype(np.float32),  # table column; loglik above keeps full precision
        entropy=s["entropy"].cpu().numpy().astype(np.float32),
        max_logprob=s["max_logprob"].cpu().numpy().astype(np.float32),
        argmax=s["argmax"].cpu().numpy().astype(np.int64),
        rank=s["rank"].cpu().numpy().astype(np.int64),
        rows=lp if keep_rows else None,
    )


def _empty_choice(keep_rows: bool, vocab: int) -> ChoiceScore:
    import torch

    z_i = np.zeros(0, np.int64)
    z_f = np.zeros(0, np.float32)
    return ChoiceScore(0.0, True, z_i, z_f, z_f, z_f, z_i, z_i,
                       torch.zeros((0, vocab), dtype=torch.float32) if keep_rows else None)


# ---------------------------------------------------------------------------
# the scorer
# ---------------------------------------------------------------------------

def model_device(model: Any, device: Any = None) -> Any:
    """Where a model's inputs go: ``device`` if given, else its first parameter's device (CPU without any)."""
    import torch

    if device is None:
        try:
            device = next(model.parameters()).device
        except StopIteration:  # pragma: no cover
            device = torch.device("cpu")
    return torch.device(device) if not isinstance(device, torch.device) else device


class Scorer:
    """Scores encoded examples with a causal LM.

    ``batch_size`` bounds the number of choice sequences per forward pass;
    ``keep_rows`` keeps each continuation token's float32 log-softmax row.
    """

    def __init__(self, model: Any, tokenizer: Any, *, device: Any = None, batch_size: int = 32,
                 keep_rows: bool = True, max_length: int | None = None, share_context: bool = True):

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.keep_rows = keep_rows
        self.share_context = share_context
        self.device = model_device(model, device)
        cfg = getattr(model, "config", None)
        if max_length is None:
            for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
                v = getattr(cfg, attr, None)
                if isinstance(v, int) and v > 0:
                    max_length = v
                    break
        self.max_length = max_length or 2048
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        # the prefix pass only needs the KV cache: skip the vocabulary projection
        # for all but its last position when the model allows it
        self._keep_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        self.n_forward = 0  # forward passes run (for benchmarks)
        self.n_forward_tokens = 0  # input positions processed (incl. padding)

    # -- model calls -------------------------------------------------------
    def _forward(self, input_ids: Any, attention_mask: Any = None, cache: Any = None, use_cache: bool = False,
                 last_only: bool = False):
        kwargs: dict[str, Any] = {"use_cache": use_cache}
        if last_only and self._keep_kw is not None:
            kwargs[self._keep_kw] = 1
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if cache is not None:
            kwargs[self._cache_kw] = cache
        self.n_forward += 1
        self.n_forward_tokens += int(input_ids.numel())
        out = self.model(input_ids, **kwargs)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        return out.logits, new_cache

    # -- public ------------------------------------------------------------
    def score(self, ex: EncodedExample) -> list[ChoiceScore]:
        """Score every choice of one example (shared-context path when it fits).

        Runs under ``torch.no_grad`` rather than ``inference_mode``: quanto's
        quantized weights cannot be used with inference tensors."""
        import torch

        with torch.no_grad():
            longest = max((len(c) for c in ex.conts), default=0)
            if self.share_context and len(ex.context_enc) + longest <= self.max_length:
                return self._score_shared(ex)
            return self._score_naive(ex)

    def score_naive(self, ex: EncodedExample) -> list[ChoiceScore]:
        """The plain computation: one full sequence per choice, no sharing."""
        import torch

        with torch.no_grad():
            return self._score_naive(ex)

    def _vocab(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def _score_naive(self, ex: EncodedExample) -> list[ChoiceScore]:
        import torch

        out: list[ChoiceScore] = []
        for cont in ex.conts:
            if not cont:
                out.append(_empty_choice(self.keep_rows, self._vocab()))
                continue
            # lm-eval: (context + continuation)[-(max_length + 1):][:-1]
            seq = (ex.context_enc + cont)[-(self.max_length + 1):][:-1]
            ids = torch.tensor([seq], dtype=torch.long, device=self.device)
            logits, _ = self._forward(ids)
            n = len(cont)
            sel = logits[0, -n:]
            out.append(_choice_score(sel, torch.tensor(cont, device=self.device), self.keep_rows))
        return out

    def _score_shared(self, ex: EncodedExample) -> list[ChoiceScore]:
        import torch

        ctx = ex.context_enc
        results: list[ChoiceScore | None] = [None] * len(ex.conts)
        todo = [i for i, c in enumerate(ex.conts) if c]
        for i, c in enumerate(ex.conts):
            if not c:
                results[i] = _empty_choice(self.keep_rows, self._vocab())
        if not todo:
            return results  # type: ignore[return-value]

        prefix_cache = None
        n_prefix = len(ctx) - 1
        if n_prefix > 0:
            ids = torch.tensor([ctx[:-1]], dtype=torch.long, device=self.device)
            _, prefix_cache = self._forward(ids, use_cache=True, last_only=True)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            seqs = [[ctx[-1]] + ex.conts[i][:-1] for i in chunk]
            width = max(len(s) for s in seqs)
            b = len(chunk)
            ids = torch.full((b, width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((b, n_prefix + width), dtype=torch.long)
            mask[:, :n_prefix] = 1
            for r, s in enumerate(seqs):
                ids[r, :len(s)] = torch.tensor(s, dtype=torch.long)
                mask[r, n_prefix:n_prefix + len(s)] = 1
            cache = None
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                if b > 1:
                    cache.batch_repeat_interleave(b)
            logits, _ = self._forward(ids.to(self.device), mask.to(self.device), cache=cache,
                                      use_cache=cache is not None)
            for r, i in enumerate(chunk):
                n = len(ex.conts[i])
                results[i] = _choice_score(logits[r, :n], torch.tensor(ex.conts[i], device=self.device),
                                           self.keep_rows)
        return results  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# tokenizer identity
# ---------------------------------------------------------------------------

#: fingerprint fields added after the first dumps were written: absent on one side is not a mismatch
FINGERPRINT_LATER = ("adds_bos", "adds_eos")


def special_tokens_added(tokenizer: Any) -> dict[str, bool]:
    """Whether the tokenizer puts a BOS in front of / an EOS after a text by
    default (what ``tokenizer(text)`` does): two tokenizers with the same
    vocabulary but different settings here give prompts of different lengths."""
    try:
        ids = [int(t) for t in tokenizer("a")["input_ids"]]
    except Exception:  # noqa: BLE001 - a tokenizer that cannot encode: nothing to record
        return {}
    bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
    return {"adds_bos": bool(ids) and bos is not None and ids[0] == bos,
            "adds_eos": len(ids) > 1 and eos is not None and ids[-1] == eos}


def fingerprint_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """The first fingerprint field on which two tokenizers differ (``class``
    ignored; the :data:`FINGERPRINT_LATER` fields only when both record them)."""
    for k in sorted(set(a) | set(b)):
        if k == "class" or (k in FINGERPRINT_LATER and (k not in a or k not in b)):
            continue
        if a.get(k) != b.get(k):
            return k
    return None


def tokenizer_fingerprint(tokenizer: Any, model_vocab_size: int | None = None) -> dict[str, Any]:
    """The models module's vocabulary fingerprint (one hash for the whole
    project), plus what alignment checks also need: the special ids and the
    width of the model's logits."""
    from qfair.models import vocab_hash

    base = vocab_hash(tokenizer)
    fp: dict[str, Any] = {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer.get_vocab()),
        "vocab_sha256": base["sha256"],
        "bos_token_id": getattr(tokenizer, "bos_token_id", None),
        "eos_token_id": getattr(tokenizer, "eos_token_id", None),
        **special_tokens_added(tokenizer),
    }
    if model_vocab_size is not None:
        fp["model_vocab_size"] = int(model_vocab_size)
    return fp
