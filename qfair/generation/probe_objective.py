"""Generation probes as a bias objective of the sensitivity scan
(``qfair sensitivity --gen-probes gen_bias_probes``).

The scan side of the prompts (the same content-keyed split as the scan's
other probes, keyed on the prompt) is continued greedily by the float model
once: ``max_new_tokens`` tokens, its log-prob rows along its own text kept in
float16. Then, for every model state the scan scores (uniform, one unit, one
unit at another width):

- ``gen_kl``: the model teacher-forced on the float model's text, the mean
  over the text's tokens of KL(float || model) per prompt, averaged over
  prompts (nats; an empty base text gives no value and is counted);
- ``lexicon_gap_shift``: the model's own greedy text, each lexicon's rate of
  matched words (:mod:`qfair.generation.lexicon`); per axis (the prompts'
  ``axis``) and lexicon, the gap between groups is max - min over the groups
  of the mean rate, and the shift is |gap(model) - gap(float)|; the headline
  row averages the shifts over the (axis, lexicon) pairs that have at least
  two groups, one row per axis averages over its lexicons.

Intervals: a percentile bootstrap over prompts (the draws of
:func:`qfair.stats.paired_bootstrap`, so the scan's other rows share them);
the gap shifts are recomputed on every resample.

The rows join the scan's table under the set ``gen``; ``qfair recommend
--objective gen_bias`` (blocks kept in float) and ``--bias-source generation``
(bit allocation) read them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qfair.errors import QfairError

GEN_SET = "gen"
GAP_METRIC = "lexicon_gap_shift"
KL_METRIC = "gen_kl"
DEFAULT_GEN_TOKENS = 16

__all__ = ["GenProbeObjective", "GenProbeError", "GenState", "gap_between_groups", "GEN_SET", "GAP_METRIC",
           "KL_METRIC", "DEFAULT_GEN_TOKENS"]


class GenProbeError(QfairError):
    """Generation probes that cannot serve as a scan objective (one line)."""


@dataclass
class GenState:
    """One model state on the generation probes."""

    conts: list[list[int]]              # its own greedy continuation per prompt
    texts: list[str]
    rates: dict[str, np.ndarray]        # lexicon -> rate per prompt (NaN: no words / lexicon off for the language)
    kl: np.ndarray                      # mean token KL(float || model) along the float text (0 for the float model)


def gap_between_groups(W: np.ndarray, x: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """max - min over groups of the (weighted) mean of ``x``: one value per row of
    the weights ``W`` [B, n] (a bootstrap's multiplicities; ones = the sample)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.stack([(W[:, m] @ x[m]) / W[:, m].sum(1) for m in masks], axis=1)
    ok = np.isfinite(means)
    hi = np.where(ok, means, -np.inf).max(1)
    lo = np.where(ok, means, np.inf).min(1)
    return np.where(ok.sum(1) >= 2, hi - lo, np.nan)


class GenProbeObjective:
    """The generation probes of one side of the split (see the module doc).

    ``tasks``: generation task objects (``qfair.tasks.get``); ``split``: the
    scan's :class:`qfair.tasks.split.Split`; ``lexicons``: name -> Lexicon
    (default: the built-in ``gendered`` and ``negative`` lists)."""

    def __init__(self, tasks: Sequence[Any], split: Any, *, side: str = "scan",
                 max_new_tokens: int = DEFAULT_GEN_TOKENS, lexicons: Mapping[str, Any] | None = None,
                 batch_size: int = 16):
        from qfair.generation.lexicon import builtin_lexicons
        from qfair.tasks.prompts import GENERATION_TASK_KIND
        from qfair.tasks.split import content_key

        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise GenProbeError(f"--gen-tokens {max_new_tokens!r}: expected a positive integer")
        self.docs: list[Any] = []
        self.task_names = []
        for t in tasks:
            if t.kind != GENERATION_TASK_KIND:
                raise GenProbeError(f"--gen-probes {t.name}: a {t.kind!r} task, not a generation task "
                                    "(e.g. gen_bias_probes)")
            self.task_names.append(t.name)
            self.docs.extend(d for d in t.docs() if split.side(content_key(d.context, [])) == side)
        if not self.docs:
            raise GenProbeError(f"--gen-probes: the {side} side of the split {split} holds no prompt")
        self.axes = np.array([(d.extras or {}).get("axis") or "group" for d in self.docs], dtype=object)
        self.groups = np.array([d.group if d.group is not None else "" for d in self.docs], dtype=object)
        if not any(len(set(self.groups[self.axes == a]) - {""}) >= 2 for a in set(self.axes)):
            raise GenProbeError("--gen-probes: no axis has prompts of two groups; a lexicon gap needs groups "
                                "(the prompts' 'group' and 'axis' fields)")
        self.langs = [(d.extras or {}).get("lang") for d in self.docs]
        self.side = side
        self.max_new_tokens = max_new_tokens
        self.lexicons = dict(lexicons) if lexicons is not None else builtin_lexicons()
        self.batch_size = batch_size
        self.base: GenState | None = None
        self._base_rows: list[np.ndarray] = []
        self._prompts: list[list[int]] = []
        self._tokenizer: Any = None
        self._device: Any = None

    def __len__(self) -> int:
        return len(self.docs)

    def info(self) -> dict[str, Any]:
        return {"name": "generation", "tasks": self.task_names, "side": self.side, "n_prompts": len(self.docs),
                "max_new_tokens": self.max_new_tokens, "decoding": "greedy", "lexicons": sorted(self.lexicons),
                "metrics": [KL_METRIC, GAP_METRIC], "set": GEN_SET}

    # -- model states ---------------------------------------------------------

    def bind(self, model: Any, tokenizer: Any, device: Any = None) -> GenState:
        """Continue every prompt with the float model (``model``) and keep its rows."""
        from qfair.generation.decode import LanguageModel, encode_prompt

        self._tokenizer, self._device = tokenizer, device
        try:
            self._prompts = [encode_prompt(tokenizer, d.context) for d in self.docs]
        except ValueError as e:
            raise GenProbeError(f"--gen-probes: {e}") from None
        lm = LanguageModel(model, tokenizer, device)
        conts = self._generate(lm)
        self._base_rows = [c.rows if c.rows is not None else np.zeros((0, 1), np.float16)
                           for c in self._teacher(lm, [c.ids for c in conts])]
        self.base = self._state(conts, np.zeros(len(self.docs)))
        return self.base

    def score(self, model: Any) -> GenState:
        """The model's own texts (lexicon rates) and its KL along the float model's texts."""
        from qfair.core import divergence
        from qfair.generation.decode import LanguageModel

        if self.base is None:
            raise RuntimeError("GenProbeObjective.score before bind")
        lm = LanguageModel(model, self._tokenizer, self._device)
        conts = self._generate(lm)
        forced = self._teacher(lm, self.base.conts)
        kl = np.full(len(self.docs), np.nan)
        for i, (b, c) in enumerate(zip(self._base_rows, forced)):
            if b.shape[0] and c.rows is not None:
                kl[i] = float(np.mean(divergence(b, c.rows, topk=(1,)).metrics["kl_pq"], dtype=np.float64))
        return self._state(conts, kl)

    def _generate(self, lm: Any) -> list[Any]:
        from qfair.generation.decode import Decoder, DecodeSettings

        dec = Decoder(lm, DecodeSettings(max_new_tokens=self.max_new_tokens), keep_rows=False)
        out = []
        for s in range(0, len(self._prompts), self.batch_size):
            out.extend(dec.generate(self._prompts[s:s + self.batch_size]))
        return out

    def _teacher(self, lm: Any, conts: Sequence[Sequence[int]]) -> list[Any]:
        from qfair.generation.teacher import teacher_force

        out = []
        for s in range(0, len(self._prompts), self.batch_size):
            out.extend(teacher_force(lm, self._prompts[s:s + self.batch_size], conts[s:s + self.batch_size],
                                     keep_rows=True, store_dtype="f16"))
        return out

    def _state(self, conts: Sequence[Any], kl: np.ndarray) -> GenState:
        ids = [list(c.ids) for c in conts]
        texts = [self._tokenizer.decode(x, skip_special_tokens=True) for x in ids]
        rates = {name: np.array([lex.rate(t, lang) for t, lang in zip(texts, self.langs)], dtype=np.float64)
                 for name, lex in self.lexicons.items()}
        return GenState(ids, texts, rates, kl)

    # -- rows -----------------------------------------------------------------

    def rows(self, state: GenState, *, resamples: int = 10_000, seed: int = 0,
             confidence: float = 0.95) -> list[dict[str, Any]]:
        """Rows (set, group, metric, n, base, value, delta, ci_low, ci_high, p) of
        ``state`` against the float model, as the scan's other rows."""
        from qfair import stats
        from qfair.generation.analysis import boot_p

        if self.base is None:
            raise RuntimeError("GenProbeObjective.rows before bind")
        out: list[dict[str, Any]] = []
        ok = np.isfinite(state.kl)
        if ok.any():
            r = stats.paired_bootstrap([stats.MeanDiff(state.kl[ok])], resamples=resamples, seed=seed,
                                       confidence=confidence)[0]
            out.append({"set": GEN_SET, "group": None, "metric": KL_METRIC, "n": int(ok.sum()), "base": 0.0,
                        "value": float(state.kl[ok].mean()), "delta": float(r.estimate), "ci_low": float(r.pct_lo),
                        "ci_high": float(r.pct_hi), "p": float(r.p)})
        n = len(self.docs)
        one = np.ones((1, n))
        per_axis: dict[str, list[tuple[float, np.ndarray]]] = {}
        for axis in sorted(set(self.axes)):
            for name in sorted(self.lexicons):
                xb, xq = self.base.rates[name], state.rates[name]
                fin = np.isfinite(xb) & np.isfinite(xq) & (self.axes == axis) & (self.groups != "")
                masks = [fin & (self.groups == g) for g in sorted(set(self.groups[fin]))]
                if len(masks) < 2:
                    continue
                xb0, xq0 = np.where(fin, xb, 0.0), np.where(fin, xq, 0.0)
                point = abs(gap_between_groups(one, xq0, masks)[0] - gap_between_groups(one, xb0, masks)[0])
                dist = []
                for b0 in range(0, resamples, 256):
                    W = np.stack([stats.bootstrap_counts(n, seed, b).astype(np.float64)
                                  for b in range(b0, min(resamples, b0 + 256))])
                    dist.append(np.abs(gap_between_groups(W, xq0, masks) - gap_between_groups(W, xb0, masks)))
                per_axis.setdefault(axis, []).append((float(point), np.concatenate(dist)))
        if not per_axis:
            return out
        alpha = (1 - confidence) / 2

        def row(group: str | None, items: list[tuple[float, np.ndarray]]) -> dict[str, Any]:
            v = float(np.mean([p for p, _ in items]))
            with np.errstate(invalid="ignore"):
                d = np.nanmean(np.stack([x for _, x in items]), axis=0)
            d = d[np.isfinite(d)]
            lo, hi = (float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha))) if d.size else (None, None)
            return {"set": GEN_SET, "group": group, "metric": GAP_METRIC, "n": n, "base": 0.0, "value": v,
                    "delta": v, "ci_low": lo, "ci_high": hi, "p": boot_p(d, 0.0) if d.size else None}

        out.append(row(None, [it for items in per_axis.values() for it in items]))
        out.extend(row(axis, items) for axis, items in per_axis.items())
        return out
