"""Dump kinds: what a dump holds and how two dumps of one kind line up.

Every dump's manifest names its ``kind``. A kind declares the tables written
per example (besides ``examples``, which every dump has), whether it may store
logits rows, and the key that aligns the rows of two dumps. The reader and
``qfair.compare`` dispatch on it; a new kind is one :class:`DumpKind` passed
to :func:`register_kind` (plus its tables in :mod:`qfair.dump.tables`).

Built in:

==================  ===============================  ==========================================
kind                tables besides ``examples``      rows align on
==================  ===============================  ==========================================
multiple_choice     choices, tokens                  tokens: example_id, choice, pos, target
choices_only        choices                          (no rows: examples align on example_id)
text                tokens                           tokens: example_id, choice, pos, target
                                                     (after the chunks' token ids)
generation          generations, tokens, gen_tokens  tokens, when both follow the same text
==================  ===============================  ==========================================

``text`` (a plain text scored like llama-perplexity, and imported llama.cpp
files) registers itself in :mod:`qfair.dump.text`, and ``generation`` in
:mod:`qfair.generation.kind`, both listed in ``_PLUGINS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qfair.dump import DumpError
from qfair.plugins import load_plugins

__all__ = ["DumpKind", "KINDS", "register_kind", "get_kind", "DEFAULT_KIND", "resolve"]

DEFAULT_KIND = "multiple_choice"  # dumps written before kinds existed


@dataclass(frozen=True)
class DumpKind:
    name: str
    tables: tuple[str, ...]          # per-example tables, in the order their parts are written
    stores_rows: bool                # may hold vocabulary-wide logits rows (--store full)
    align_table: str | None = None   # the table whose keys align two dumps row by row
    align_keys: tuple[str, ...] = ()
    example_keys: tuple[str, ...] = ("example_id", "label", "n_choices")  # examples that must match
    # "module:function" adding this kind's own analysis tables to qfair.compare
    # (fn(base, quant, label, cfg, token_table) -> {table name: DataFrame}); imported when needed
    analysis: str | None = None
    # "module:function" with further alignment checks of this kind (fn(a, b, pair) raises DumpError),
    # run before the row-by-row key check so that it can name the problem in the kind's own terms
    align_check: str | None = None
    # "module:function" telling whether two dumps of this kind are meant to align row by row
    # (fn(a, b) -> bool; None: always). When it says no, only the examples must agree, and the
    # analysis compares what does not need aligned rows (e.g. generation dumps without --reference).
    rows_align: str | None = None
    # "module:function" that checks this kind's producer options before the model loads and returns
    # the producer's settings (fn(tasks, options, seed) -> settings); None: the kind takes none
    prepare: str | None = None
    # "module:function" writing a dump of this kind from a loaded model and its tasks
    # (fn(out, loaded, tasks, *, settings, reference, config, **common) -> DumpSummary); None: the
    # multiple-choice producer, qfair.dump.multiple_choice.run_dump
    producer: str | None = None
    doc: str = ""

    @property
    def has_choices(self) -> bool:
        """Example-level statistics (accuracy, calibration, flips) need a choices table."""
        return "choices" in self.tables

    @property
    def has_tokens(self) -> bool:
        return "tokens" in self.tables


KINDS: dict[str, DumpKind] = {}


def register_kind(kind: DumpKind) -> DumpKind:
    if kind.name in KINDS:
        raise ValueError(f"dump kind {kind.name!r} is registered twice")
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str | None) -> DumpKind:
    _load_plugins()
    key = DEFAULT_KIND if name is None else name
    try:
        return KINDS[key]
    except KeyError:
        raise DumpError(f"unknown dump kind {key!r}; known kinds: {', '.join(sorted(KINDS))}") from None


def resolve(ref: str) -> Any:
    """The function a kind names as ``"module:function"``, imported when first
    needed: the dump calls a kind's own code without importing the layer that
    implements it."""
    import importlib

    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


# modules that register further kinds when imported (one line per kind implemented elsewhere)
_PLUGINS: tuple[str, ...] = (
    "qfair.dump.text",  # text: llama-perplexity-style chunks of a plain text, and imported llama.cpp .kld files
    "qfair.generation.kind",  # generation: continuations of prompts, teacher-forced on a reference
)


def _load_plugins() -> None:
    import importlib

    for module in _PLUGINS:
        importlib.import_module(module)
    load_plugins("qfair.dump_kinds", DumpError)  # other packages' kinds (entry points)


MULTIPLE_CHOICE = register_kind(DumpKind(
    "multiple_choice", ("choices", "tokens"), stores_rows=True, align_table="tokens",
    align_keys=("example_id", "choice", "pos", "target"),
    doc="scored multiple-choice examples: per choice a log-likelihood, per continuation token a row"))
CHOICES_ONLY = register_kind(DumpKind(
    "choices_only", ("choices",), stores_rows=False,
    doc="examples and per-choice log-likelihoods only (e.g. imported from lm-evaluation-harness logs)"))
