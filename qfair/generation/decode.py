"""Batched generation with left padding and a KV cache, keeping every
generated position's distribution.

- Prompts are left-padded into one batch; position ids follow the attention
  mask (``cumsum - 1``, as transformers' ``generate`` computes them), so a
  padded prompt sees exactly the positions it would see alone.
- One prefill pass over the prompts, then one pass per new token with the
  KV cache. Every row of the batch runs until all rows stopped (EOS or
  ``max_new_tokens``), like ``model.generate``.
- At every step the float32 log-softmax of the logits (float64 when the model
  runs in float64) is the stored row: the model's own distribution at
  temperature 1. Greedy decoding takes its first maximum.
- Sampling (``temperature > 0``) applies the temperature and nucleus (top-p)
  filter to the logits in float64 on the CPU and draws by inverting the CDF of
  the kept tokens (sorted by probability, ties by token id) with one uniform
  number from a ``torch.Generator`` seeded per (prompt, sample)
  (:func:`row_seed`). The draw of a row never depends on the other rows of the
  batch, so the text does not depend on batch size or composition.
"""
from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["DecodeSettings", "Continuation", "LanguageModel", "Decoder", "row_seed", "encode_prompt",
           "sample_from_logits", "SCALARS"]

SCALARS = ("logprob", "entropy", "max_logprob", "argmax", "rank")


@dataclass(frozen=True)
class DecodeSettings:
    """How continuations are decoded. ``temperature = 0`` is greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    samples: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be a positive integer, got {self.max_new_tokens!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not 0 <= self.temperature < math.inf:
            raise ValueError(f"--temperature must be a finite number >= 0 (0: greedy), got {self.temperature!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"--samples must be a positive integer, got {self.samples!r}")
        if self.greedy and self.samples > 1:
            raise ValueError(f"--samples {self.samples} with greedy decoding would repeat one text; "
                             "give --temperature > 0 to sample")
        if self.greedy and self.top_p != 1.0:
            raise ValueError("--top-p applies to sampling only; give --temperature > 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["mode"] = "greedy" if self.greedy else "sample"
        d["temperature"] = float(self.temperature)
        d["top_p"] = float(self.top_p)
        return d


def row_seed(seed: int, example_id: str, sample: int) -> int:
    """The seed of one (prompt, sample): 63 bits of sha256 over the run seed,
    the example id and the sample index."""
    h = hashlib.sha256(f"qfair-gen/{int(seed)}/{example_id}/{int(sample)}".encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFFFFFFFFFFFFFF


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt's token ids with the tokenizer's default special tokens (as
    ``tokenizer(prompt)`` and ``model.generate`` pipelines use them)."""
    ids = list(tokenizer.encode(prompt))
    if not ids:
        raise ValueError(f"prompt {prompt[:40]!r} encodes to no token")
    return ids


@dataclass
class Continuation:
    """One generated (or teacher-forced) continuation: token ids, why it
    stopped, per-token scalars and (when kept) the stored rows."""

    ids: list[int]
    stop: str                         # "eos" | "length" | "reference"
    scalars: dict[str, np.ndarray]    # SCALARS -> [n] (float32 / int64)
    rows: np.ndarray | None = field(default=None, repr=False)   # [n, V] in the storage dtype
    nonfinite: int = 0

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def loglik(self) -> float:
        return float(np.asarray(self.scalars["logprob"], dtype=np.float64).sum())


class LanguageModel:
    """A causal LM with what batched decoding needs: its forward keywords
    (cache, logits to keep, position ids), pad and EOS ids and the device."""

    def __init__(self, model: Any, tokenizer: Any, device: Any = None):
        from qfair.scoring import model_device

        self.model = model
        self.tokenizer = tokenizer
        self.device = model_device(model, device)
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.keep_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        self.has_position_ids = "position_ids" in params
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        eos: set[int] = set()
        for src in (getattr(tokenizer, "eos_token_id", None),
                    getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
            if isinstance(src, int):
                eos.add(int(src))
            elif isinstance(src, (list, tuple)):
                eos.update(int(x) for x in src)
        self.eos_ids = frozenset(eos)
        self.n_forward = 0

    def forward(self, ids: Any, mask: Any, *, cache: Any = None, use_cache: bool = False,
                keep: int | None = None, positions: Any = None) -> tuple[Any, Any]:
        """(logits, cache) of one pass; ``keep``: only the last ``keep`` positions' logits."""
        kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": use_cache}
        if self.has_position_ids:
            kwargs["position_ids"] = positions if positions is not None else position_ids(mask)[:, -ids.shape[1]:]
        if keep is not None and self.keep_kw is not None:
            kwargs[self.keep_kw] = int(keep)
        if cache is not None:
            kwargs[self.cache_kw] = cache
        self.n_forward += 1
        out = self.model(ids, **kwargs)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        logits = out.logits
        if keep is not None and logits.shape[1] > keep:
            logits = logits[:, -keep:]
        return logits, new_cache


def position_ids(mask: Any) -> Any:
    """Position of every column of a padded batch (pads get 0), as transformers' generate."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 0)


def log_softmax(logits: Any) -> Any:
    """float32 log-softmax (float64 kept when the model runs in float64)."""
    import torch

    return torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)


def scalars_of(lp: Any, targets: Any) -> dict[str, np.ndarray]:
    """Per-row target-token scalars (the tokens table's columns) as numpy."""
    from qfair.scoring import token_scalars

    s = token_scalars(lp, targets)
    return {"logprob": s["logprob"].float().cpu().numpy(), "entropy": s["entropy"].float().cpu().numpy(),
            "max_logprob": s["max_logprob"].float().cpu().numpy(),
            "argmax": s["argmax"].cpu().numpy().astype(np.int64), "rank": s["rank"].cpu().numpy().astype(np.int64)}


def sample_from_logits(logits: Any, temperature: float, top_p: float, generator: Any) -> int:
    """One token from a logits row (any dtype/device): softmax(logits / T) in
    float64 on the CPU, nucleus filter (the smallest set of most likely tokens,
    ties by token id, whose mass reaches ``top_p``), then the inverse CDF of
    the kept mass at one uniform draw of ``generator``."""
    import torch

    z = logits.detach().to("cpu", torch.float64) / float(temperature)
    z = z - z.max()
    p = torch.exp(z)
    p = p / p.sum()
    sp, order = torch.sort(p, descending=True, stable=True)
    c = torch.cumsum(sp, 0)
    k = int(torch.searchsorted(c, torch.tensor([float(top_p)], dtype=torch.float64))[0]) + 1
    k = min(max(k, 1), int(c.numel()))
    u = torch.rand((), generator=generator, dtype=torch.float64) * c[k - 1]
    j = int(torch.searchsorted(c[:k], u.reshape(1), right=True)[0])
    return int(order[min(j, k - 1)])


class Decoder:
    """Generate continuations of a batch of prompts (see the module docstring).

    ``keep_rows``: keep every generated position's row in ``store_dtype``.
    """

    def __init__(self, lm: LanguageModel, settings: DecodeSettings, *, keep_rows: bool = True,
                 store_dtype: str = "f16"):
        self.lm = lm
        self.settings = settings
        self.keep_rows = keep_rows
        self.store_dtype = store_dtype
        self.n_new_tokens = 0

    def generate(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int] | None = None) -> list[Continuation]:
        import torch

        with torch.no_grad():
            return self._generate(prompts, seeds)

    def _generate(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int] | None) -> list[Continuation]:
        import torch

        from qfair.dump.writer import to_storage

        st, lm = self.settings, self.lm
        b = len(prompts)
        if b == 0:
            return []
        if not st.greedy and (seeds is None or len(seeds) != b):
            raise ValueError("sampling needs one seed per prompt")
        gens = None
        if not st.greedy:
            gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]  # type: ignore[union-attr]
        width = max(len(p) for p in prompts)
        ids = torch.full((b, width), lm.pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[r, width - len(p):] = 1
        ids, mask = ids.to(lm.device), mask.to(lm.device)
        pos = position_ids(mask)
        logits, cache = lm.forward(ids, mask, use_cache=True, keep=1, positions=pos)
        last_pos = pos[:, -1:]
        out_ids: list[list[int]] = [[] for _ in range(b)]
        stops = ["length"] * b
        live = [True] * b
        scal: list[dict[str, list]] = [{k: [] for k in SCALARS} for _ in range(b)]
        rows: list[list[np.ndarray]] = [[] for _ in range(b)]
        nonfinite = [0] * b
        eos = lm.eos_ids
        for step in range(st.max_new_tokens):
            lp = log_softmax(logits[:, -1, :])
            if st.greedy:
                nxt = torch.argmax(lp, dim=-1)
            else:
                raw = logits[:, -1, :]
                nxt = torch.tensor([sample_from_logits(raw[r], st.temperature, st.top_p, gens[r])  # type: ignore[index]
                                    if live[r] else lm.pad_id for r in range(b)], dtype=torch.long,
                                   device=lp.device)
            s = scalars_of(lp, nxt)
            finite = torch.isfinite(lp).all(-1).cpu().numpy()
            stored = to_storage(lp, self.store_dtype) if self.keep_rows else None
            nxt_l = nxt.cpu().tolist()
            for r in range(b):
                if not live[r]:
                    continue
                out_ids[r].append(int(nxt_l[r]))
                for k in SCALARS:
                    scal[r][k].append(s[k][r])
                if stored is not None:
                    rows[r].append(stored[r])
                nonfinite[r] += int(not finite[r])
                self.n_new_tokens += 1
                if nxt_l[r] in eos:
                    live[r] = False
                    stops[r] = "eos"
            if not any(live) or step == st.max_new_tokens - 1:
                break
            feed = torch.tensor([t if live[r] else lm.pad_id for r, t in enumerate(nxt_l)], dtype=torch.long,
                                device=lm.device).view(b, 1)
            mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=mask.device)], dim=1)
            last_pos = last_pos + 1
            logits, cache = lm.forward(feed, mask, cache=cache, use_cache=True, positions=last_pos)
        res = []
        for r in range(b):
            sc = {k: np.asarray(scal[r][k], dtype=np.int64 if k in ("argmax", "rank") else np.float32)
                  for k in SCALARS}
            rr = np.stack(rows[r]) if (self.keep_rows and rows[r]) else None
            res.append(Continuation(out_ids[r], stops[r], sc, rr, nonfinite[r]))
        return res
