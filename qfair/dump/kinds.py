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

A kind that ``qfair dump`` writes also declares everything the commands ask of
it, so that none of them branches on kind names: its producer and ``prepare``,
its options (:class:`KindOption`: ``qfair dump`` turns them into flags, a
study group into keys), which tasks it dumps (``task_kinds``; or none, when an
option of its own selects it), its estimate of the rows it writes
(``qfair study --dry-run``), its analysis tables and its report sections.
:func:`select_kind` picks the kind of a run from its options and tasks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qfair.dump import DumpError
from qfair.plugins import load_plugins

__all__ = ["DumpKind", "KindOption", "KindUsageError", "KINDS", "register_kind", "get_kind", "DEFAULT_KIND",
           "resolve", "all_kinds", "select_kind", "kind_of_tasks", "option_owner", "TASK_OPTIONS"]

DEFAULT_KIND = "multiple_choice"  # dumps written before kinds existed


class KindUsageError(DumpError):
    """Options of a dump kind that do not go together (the CLI reports it as a usage error)."""


@dataclass(frozen=True)
class KindOption:
    """An option of a dump kind's producer, declared as data: ``qfair dump`` makes
    it a flag (``--max-new-tokens`` for ``max_new_tokens``) and a study group
    accepts it as a key; the value travels to the kind's ``prepare`` and
    producer in ``options``."""

    name: str                        # the Python name: options[name]; the flag is --name-with-dashes
    type: str                        # "int" | "float" | "file" (an existing file) | "dir" (a directory path)
    help: str
    metavar: str | None = None
    min: float | None = None         # int / float: the smallest value allowed
    max: float | None = None
    min_open: bool = False           # float: min itself excluded
    requires: tuple[str, ...] = ()   # other options of the kind this one cannot go without
    is_input: bool = False           # a path the run reads: --out may neither be nor hold it
    study: bool = True               # a study group may set it (False: the study sets it itself)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def help_short(self) -> str:
        """The help's first clause (for error messages)."""
        return self.help.split(":")[-1].split(".")[0].split("(")[0].strip().rstrip(",")


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
    # "module:function" writing a dump of this kind from a loaded model and its tasks (fn(out, loaded, tasks, *,
    # config, threads, part, store, store_dtype, shard_rows, batch_size, resume, overwrite, seed, progress)
    # -> DumpSummary; a kind with options also gets settings= (what prepare returned) and options=);
    # None: qfair dump cannot write this kind
    producer: str | None = None
    doc: str = ""
    # the producer's options (qfair dump's flags, a study group's keys), in the order --help lists them
    options: tuple[KindOption, ...] = ()
    # the task kinds (qfair.metrics.task_kinds) whose tasks this kind dumps; tasks of a task kind no kind
    # claims are dumped by DEFAULT_KIND
    task_kinds: tuple[str, ...] = ()
    # the option that selects this kind instead of tasks (e.g. text: --text FILE); None: the kind dumps tasks
    selected_by: str | None = None
    # why a data-parallel run (torchrun) cannot split its shards across processes up front; None: it can
    unsplittable: str | None = None
    # the option a study sets to the base model's dump when it dumps a quantized model (teacher forcing)
    base_option: str | None = None
    # "module:function" telling whether a complete dump still follows the base dump its base_option names
    # (fn(manifest, base_manifest) -> bool); a study redoes it otherwise
    follows_base: str | None = None
    # "module:function" estimating the rows a dump writes, from the tokenizer only (qfair study --dry-run):
    # fn(tasks, options, tokenizer) -> (rows, exact)
    estimate: str | None = None
    # "module:function" giving a finished dump's per-task metrics for its summary (fn(path) -> {task: {...}});
    # None: the choices' metrics (qfair.dump.summary)
    metrics: str | None = None
    # "module:NAME" of the report sections (a tuple of qfair.report.sections.Section) that show this kind's
    # own tables; the report imports it for an analysis of this kind
    report: str | None = None
    # the report leaves out the generic sections that have nothing to show (a kind without answers)
    report_hides_empty: bool = False

    @property
    def takes_tasks(self) -> bool:
        return self.selected_by is None

    def option(self, name: str) -> KindOption:
        return next(o for o in self.options if o.name == name)

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
    names = [o.name for o in kind.options]
    taken = {o.name: k.name for k in KINDS.values() for o in k.options}
    clash = [n for n in names if n in taken or n in TASK_OPTIONS or names.count(n) > 1]
    if clash:
        raise ValueError(f"dump kind {kind.name!r}: option {clash[0]!r} is already an option of "
                         f"{taken.get(clash[0], 'qfair dump')}")
    if kind.selected_by is not None and kind.selected_by not in names:
        raise ValueError(f"dump kind {kind.name!r}: selected_by {kind.selected_by!r} is not one of its options")
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


#: the options that name a run's tasks (a kind selected by an option of its own takes none of them)
TASK_OPTIONS = ("tasks", "data_files", "data_dir", "limit")


def all_kinds() -> list[DumpKind]:
    """Every registered kind (plugins loaded), in registration order."""
    _load_plugins()
    return list(KINDS.values())


def option_owner(name: str) -> DumpKind | None:
    """The kind whose option ``name`` is."""
    return next((k for k in all_kinds() for o in k.options if o.name == name), None)


def kind_of_tasks(task_kinds: dict[str, str]) -> DumpKind:
    """The kind that dumps these tasks (task name -> task kind); KindUsageError when
    they need different kinds."""
    by_kind: dict[str, list[str]] = {}
    for task, tk in task_kinds.items():
        k = next((k for k in all_kinds() if tk in k.task_kinds), None) or get_kind(DEFAULT_KIND)
        by_kind.setdefault(k.name, []).append(task)
    by_kind = dict(sorted(by_kind.items(), key=lambda kv: kv[0] == DEFAULT_KIND))  # the claimed kinds first
    if len(by_kind) > 1:
        parts = [f"{name} tasks ({', '.join(ts)})" if name != DEFAULT_KIND else f"scored tasks ({', '.join(ts)})"
                 for name, ts in by_kind.items()]
        raise DumpError(f"--tasks mixes {' with '.join(parts)}; dump them into separate directories")
    return get_kind(next(iter(by_kind), DEFAULT_KIND))


def select_kind(options: dict[str, Any], *, tasks_given: bool = False,
                task_kinds: dict[str, str] | None = None) -> DumpKind:
    """The kind of one run: the kind an option of which selects it (``--text``),
    else the kind of its tasks (``task_kinds``: task name -> task kind; None: not
    known yet, the default kind's checks only). ``options``: the kinds' options
    given (None values dropped); one of another kind is refused, one line naming
    it (KindUsageError for what the flags alone show, DumpError otherwise)."""
    given = {k: v for k, v in options.items() if v is not None}
    owners = {}
    for name in given:
        owner = option_owner(name)
        if owner is None:
            raise KindUsageError(f"--{name.replace('_', '-')}: not an option of any dump kind")
        owners[name] = owner
    selecting = [k for k in dict.fromkeys(owners.values()) if k.selected_by in given]
    if len(selecting) > 1:
        raise KindUsageError(f"{' and '.join(k.option(k.selected_by).flag for k in selecting)} exclude each other")
    if selecting:
        kind = selecting[0]
        flag = kind.option(kind.selected_by).flag
        if tasks_given:
            raise KindUsageError(f"{flag} makes a {kind.name} dump, which takes no tasks; drop --tasks / --data-file "
                                 "/ --data-dir / --limit")
    elif task_kinds is not None:
        kind = kind_of_tasks(task_kinds)
    else:
        kind = next((k for k in dict.fromkeys(owners.values()) if k.takes_tasks), get_kind(DEFAULT_KIND))
    for name, owner in owners.items():
        flag = owner.option(name).flag
        if owner is not kind:
            if owner.selected_by is not None:
                raise KindUsageError(f"{' and '.join(o.flag for o in owner.options if o.name in given)} go with "
                                     f"{owner.option(owner.selected_by).flag}")
            opts = ", ".join(owner.option(n).flag for n in given if owners[n] is owner)
            what = f"--tasks ({', '.join(task_kinds)})" if task_kinds else "the tasks"
            raise DumpError(f"{opts}: {owner.name} options, but {what} are not {owner.name} tasks")
        for need in owner.option(name).requires:
            if need not in given:
                raise KindUsageError(f"{flag} needs {owner.option(need).flag} ({owner.option(need).help_short})")
    return kind


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
    producer="qfair.dump.run:run_dump", estimate="qfair.dump.multiple_choice:estimate_rows",
    doc="scored multiple-choice examples: per choice a log-likelihood, per continuation token a row"))
CHOICES_ONLY = register_kind(DumpKind(
    "choices_only", ("choices",), stores_rows=False,
    doc="examples and per-choice log-likelihoods only (e.g. imported from lm-evaluation-harness logs)"))
