"""Shapes of the models the seed study runs, from their published ``config.json``
files: what ``qfair study --dry-run`` uses when a model's own configuration
cannot be read (an offline machine without the model in its cache). Only the
logits row width (the vocabulary) enters the disk estimate; hidden size,
layers and parameters are shown so that a reader can check the entry.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KnownModel", "KNOWN_MODELS", "known_model"]


@dataclass(frozen=True)
class KnownModel:
    hidden_size: int
    layers: int
    vocab_size: int        # the logits row width (config vocab_size, padded as the checkpoint stores it)
    params: float          # parameters (the model's published size)


KNOWN_MODELS: dict[str, KnownModel] = {
    "bigscience/bloom-560m": KnownModel(1024, 24, 250880, 560e6),
    "bigscience/bloom-1b1": KnownModel(1536, 24, 250880, 1.1e9),
    "bigscience/bloom-1b7": KnownModel(2048, 24, 250880, 1.7e9),
    "bigscience/bloom-3b": KnownModel(2560, 30, 250880, 3.0e9),
    "bigscience/bloom-7b1": KnownModel(4096, 30, 250880, 7.1e9),
    "facebook/opt-125m": KnownModel(768, 12, 50272, 125e6),
    "facebook/opt-350m": KnownModel(1024, 24, 50272, 350e6),
    "facebook/opt-1.3b": KnownModel(2048, 24, 50272, 1.3e9),
    "facebook/opt-2.7b": KnownModel(2560, 32, 50272, 2.7e9),
    "facebook/opt-6.7b": KnownModel(4096, 32, 50272, 6.7e9),
    "meta-llama/Llama-2-7b-hf": KnownModel(4096, 32, 32000, 6.7e9),
    "mistralai/Mistral-7B-v0.1": KnownModel(4096, 32, 32000, 7.2e9),
}


def known_model(model_id: str) -> KnownModel | None:
    """The table's entry for a hub id (exact, else case-insensitive), or None."""
    if model_id in KNOWN_MODELS:
        return KNOWN_MODELS[model_id]
    lower = model_id.lower()
    return next((v for k, v in KNOWN_MODELS.items() if k.lower() == lower), None)
