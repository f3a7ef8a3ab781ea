"""The ``generation`` dump kind and its tables.

A generation dump holds one example per prompt and, per (prompt, sample):

- ``generations``: one row per continuation the dump knows: the model's own
  (``source = "free"``) and, in a dump made with ``--reference``, the
  reference model's continuation it was teacher-forced on
  (``source = "reference"``): token ids, text, where each token's text ends,
  why it stopped, its log-likelihood under this dump's model and its rows;
- ``tokens``: one row per position of the *aligned* continuation (the free one
  in a base dump, the reference one with ``--reference``), with the
  multiple-choice tokens schema (``choice`` = sample index) and one logits row
  each, so that two dumps aligned on the same text compare row by row;
- ``gen_tokens``: the target-token scalars of every free continuation
  (no rows): the model's confidence while it writes its own text.

Two generation dumps align row by row when their ``tokens`` come from the same
text: the base dump's own, to which a ``--reference`` dump records the sha256
of the base's ``tokens.parquet`` (:func:`rows_align`).
"""
from __future__ import annotations

from typing import Any

from qfair.dump.kinds import DumpKind, KindOption, register_kind
from qfair.dump.tables import TableSpec, register_table

__all__ = ["GENERATION", "rows_align", "row_source", "follows_base", "estimate_rows"]


def _generations() -> dict[str, Any]:
    import polars as pl

    return {
        "task": pl.Utf8, "example_id": pl.Utf8, "doc_index": pl.Int64, "sample": pl.Int64, "source": pl.Utf8,
        "seed": pl.Int64, "n_prompt_tokens": pl.Int64, "token_ids": pl.List(pl.Int64),
        "char_ends": pl.List(pl.Int64), "text": pl.Utf8, "n_tokens": pl.Int64, "stop": pl.Utf8,
        "loglik": pl.Float64, "first_row": pl.Int64, "n_rows": pl.Int64,
    }


def _gen_tokens() -> dict[str, Any]:
    import polars as pl

    return {
        "task": pl.Utf8, "example_id": pl.Utf8, "sample": pl.Int64, "pos": pl.Int64, "target": pl.Int64,
        "logprob": pl.Float32, "entropy": pl.Float32, "max_logprob": pl.Float32, "argmax": pl.Int64,
        "rank": pl.Int64,
    }


register_table(TableSpec(
    "generations", "generations.parquet", _generations,
    "one row per (prompt, sample, source): a continuation's token ids, text and stop reason"))
register_table(TableSpec(
    "gen_tokens", "gen_tokens.parquet", _gen_tokens,
    "one row per token of a model's own (free) continuation: the target-token scalars"))

GENERATION = register_kind(DumpKind(
    "generation", ("generations", "tokens", "gen_tokens"), stores_rows=True, align_table="tokens",
    align_keys=("example_id", "choice", "pos", "target"), example_keys=("example_id", "context"),
    analysis="qfair.generation.analysis:generation_tables", rows_align="qfair.generation.kind:rows_align",
    prepare="qfair.generation.producer:prepare_settings", producer="qfair.generation.producer:produce",
    doc="generated continuations of prompts: per generated (or teacher-forced) position a row",
    options=(
        KindOption("max_new_tokens", "int", "Generation tasks: tokens to generate per prompt at most (default 64; "
                   "stops at EOS).", min=1),
        KindOption("temperature", "float", "Generation tasks: 0 = greedy (default); > 0 samples, seeded per "
                   "(prompt, sample) by --seed.", min=0),
        KindOption("top_p", "float", "Generation tasks: nucleus sampling mass (default 1).", min=0, max=1,
                   min_open=True),
        KindOption("samples", "int", "Generation tasks: continuations per prompt (default 1; > 1 needs "
                   "--temperature > 0).", min=1),
        KindOption("reference", "dir", "Generation tasks: the base model's generation dump; this model is "
                   "teacher-forced on its texts (rows aligned with it) and also writes its own.",
                   is_input=True, study=False),
    ),
    task_kinds=("generation",), base_option="reference",
    unsplittable="generation dumps cut their shards while generating, so they cannot be split across processes "
                 "up front",
    follows_base="qfair.generation.kind:follows_base", estimate="qfair.generation.kind:estimate_rows",
    report="qfair.report.generation:SECTIONS"))


def row_source(d: Any) -> str | None:
    """The identity of the text a generation dump's rows follow: the sha256 of
    the base dump's tokens.parquet (its own for a dump without --reference)."""
    gen = d.manifest.get("generation") or {}
    ref = gen.get("reference") or {}
    if ref.get("tokens_sha256"):
        return str(ref["tokens_sha256"])
    return ((d.manifest.get("tables") or {}).get("tokens") or {}).get("sha256")


def rows_align(a: Any, b: Any) -> bool:
    """Whether two generation dumps were scored on the same continuations."""
    sa, sb = row_source(a), row_source(b)
    return sa is not None and sa == sb


def follows_base(manifest: dict[str, Any], base_manifest: dict[str, Any]) -> bool:
    """Whether a dump teacher-forced on a base dump still follows its texts: the
    base's tokens.parquet is the one it recorded (a study redoes it otherwise)."""
    want = ((manifest.get("generation") or {}).get("reference") or {}).get("tokens_sha256")
    have = ((base_manifest.get("tables") or {}).get("tokens") or {}).get("sha256")
    return want == have


def estimate_rows(tasks: Any, options: dict[str, Any], tokenizer: Any) -> tuple[int, bool]:
    """An upper bound (not exact): every continuation at --max-new-tokens."""
    docs = sum(sum(1 for _ in t.docs()) for t in tasks)
    return docs * int(options.get("samples", 1)) * int(options.get("max_new_tokens", 64)), False
