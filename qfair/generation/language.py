"""Language identification of generated text (lingua-language-detector, offline).

One detector over every language lingua knows, in its low-accuracy mode
(trigram models only: about 80 MB and two seconds to load, against 1 GB and
thirty seconds for the full models), built once per process. A text whose
language lingua cannot decide (no letters, empty) gets ``None``. Codes are
ISO 639-1 ("en", "fr", "zh", ...).
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

__all__ = ["detect", "detect_many", "DETECTOR"]

DETECTOR = "lingua-language-detector, all languages, low-accuracy mode"


@lru_cache(maxsize=1)
def _detector() -> Any:
    try:
        from lingua import LanguageDetectorBuilder
    except ImportError:  # pragma: no cover - a declared dependency of the models extra
        raise ImportError("language detection needs lingua-language-detector: pip install "
                          "lingua-language-detector") from None
    return LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()


def _code(lang: Any) -> str | None:
    if lang is None:
        return None
    return lang.iso_code_639_1.name.lower()


def detect(text: str) -> str | None:
    """ISO 639-1 code of the language of ``text``, or None."""
    if not text or not text.strip():
        return None
    return _code(_detector().detect_language_of(text))


def detect_many(texts: Sequence[str]) -> list[str | None]:
    det = _detector()
    todo = [i for i, t in enumerate(texts) if t and t.strip()]
    out: list[str | None] = [None] * len(texts)
    if todo:
        res = det.detect_languages_in_parallel_of([texts[i] for i in todo])
        for i, r in zip(todo, res):
            out[i] = _code(r)
    return out
