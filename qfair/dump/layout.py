"""The dump format's constants: its name and version, the storage modes and
dtypes of the logits rows, and the record of a top-K row.

They sit below both :mod:`qfair.dump.manifest` (which reads and writes
manifest.json, re-exporting them) and :mod:`qfair.dump.schema` (which checks a
manifest against them), so that neither of the two imports the other's
importer.
"""
from __future__ import annotations

from typing import Any

__all__ = ["FORMAT", "FORMAT_VERSION", "STORE_MODES", "STORE_DTYPES", "NPY_DTYPES", "TOPK_ID_DTYPE",
           "TOPK_TAIL_DTYPE", "REQUIRED_KEYS", "topk_record"]

FORMAT = "qfair-dump"
FORMAT_VERSION = 2  # 2: the manifest names the dump kind (1: always multiple_choice)

STORE_MODES = ("full", "none", "topk")
STORE_DTYPES = ("f16", "f32", "bf16")
# numpy dtype string of each stored dtype (bf16 as raw uint16 bit patterns)
NPY_DTYPES = {"f16": "<f2", "f32": "<f4", "bf16": "<u2"}
# the fields of a top-K record besides the values: token ids and the log of the mass outside the top K
TOPK_ID_DTYPE = "<i4"
TOPK_TAIL_DTYPE = "<f4"

REQUIRED_KEYS = ("format", "format_version", "status", "storage", "shards", "tokenizer", "vocab_size")


def topk_record(dtype: str, k: int) -> Any:
    """The numpy record of one row of a top-K shard: ``logprob`` (K values in the
    stored dtype, largest first), ``id`` (their token ids, int32) and ``tail``
    (float32 log of the probability outside the K)."""
    import numpy as np

    return np.dtype([("logprob", NPY_DTYPES[dtype], (int(k),)), ("id", TOPK_ID_DTYPE, (int(k),)),
                     ("tail", TOPK_TAIL_DTYPE)])
