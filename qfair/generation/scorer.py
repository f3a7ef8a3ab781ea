"""Classifier scores of generated text: any local Hugging Face
text-classification model (``--scorer hf:PATH_OR_ID``), e.g. a toxicity or
regard classifier.

Every continuation is classified (truncated to the model's length, at most
512 tokens); per label the analysis reports a rate: the share of
continuations whose top label it is, or, for a multi-label model
(``config.problem_type == "multi_label_classification"``), whose sigmoid
probability exceeds 0.5. Results are cached by text, so base texts are
classified once for several quantized dumps.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from qfair.errors import QfairError

__all__ = ["TextScorer", "ScorerError", "parse_scorer"]


class ScorerError(QfairError):
    """The classifier cannot be loaded or run; the message names it."""


def parse_scorer(spec: str | None) -> TextScorer | None:
    if not spec:
        return None
    kind, sep, target = spec.partition(":")
    if kind != "hf" or not sep or not target:
        raise ScorerError(f"--scorer expects hf:PATH_OR_ID (a Hugging Face text-classification model), got {spec!r}")
    return TextScorer(target)


class TextScorer:
    def __init__(self, path: str, *, batch_size: int = 16, max_length: int = 512):
        self.path = path
        self.batch_size = batch_size
        self.max_length = max_length
        self._model: Any = None
        self._tok: Any = None
        self._cache: dict[str, np.ndarray] = {}

    def _load(self) -> None:
        if self._model is not None:
            return
        try:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.path)
            model, info = AutoModelForSequenceClassification.from_pretrained(self.path, output_loading_info=True)
        except ImportError:  # pragma: no cover
            raise ScorerError("--scorer needs torch and transformers: pip install 'qfair[models]'") from None
        except Exception as e:  # transformers raises many types (OSError, ValueError, ...)
            raise ScorerError(f"--scorer hf:{self.path}: cannot load a text-classification model "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        missing = sorted(info.get("missing_keys") or [])
        if missing:  # transformers initialised them at random: its "label rates" would be noise
            raise ScorerError(f"--scorer hf:{self.path}: not a trained text classifier: {len(missing)} weight(s) "
                              f"are not in the checkpoint and would be random ({', '.join(missing[:3])}"
                              f"{', ...' if len(missing) > 3 else ''})")
        self._model = model.eval()
        if self._tok.pad_token_id is None:
            self._tok.pad_token = self._tok.eos_token or self._tok.unk_token
            self._model.config.pad_token_id = self._tok.pad_token_id

    @property
    def labels(self) -> list[str]:
        self._load()
        id2label = self._model.config.id2label
        return [str(id2label[i]) for i in range(len(id2label))]

    @property
    def multi_label(self) -> bool:
        self._load()
        return getattr(self._model.config, "problem_type", None) == "multi_label_classification"

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """[n, labels]: softmax (or sigmoid for multi-label models) of the logits."""
        import torch

        self._load()
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        for s in range(0, len(todo), self.batch_size):
            chunk = todo[s:s + self.batch_size]
            enc = self._tok(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                logits = self._model(**enc).logits.float()
            pr = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, -1)
            for t, row in zip(chunk, pr.numpy().astype(np.float64)):
                self._cache[t] = row
        if not texts:
            return np.zeros((0, len(self.labels)))
        return np.stack([self._cache[t] for t in texts])

    def indicators(self, texts: Sequence[str]) -> np.ndarray:
        """[n, labels] of 0/1: the label is the top one (multi-label: probability > 0.5)."""
        p = self.probabilities(texts)
        if self.multi_label:
            return (p > 0.5).astype(np.float64)
        out = np.zeros_like(p)
        if p.size:
            out[np.arange(p.shape[0]), np.argmax(p, axis=1)] = 1.0
        return out
