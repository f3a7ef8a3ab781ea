"""Probe examples of a sensitivity scan and their split into a *scan* side and
a *held-out* side.

Probe tasks are ordinary qfair tasks. CrowS-Pairs tasks (task kind
``crows_pairs``: more / less stereotyping sentence) and StereoSet tasks (task
kind ``stereoset``: the stereotype / anti-stereotype pair, the unrelated option
left out of the pair) are the bias probes; every other task is a general task
(accuracy). Building on StereoSet keeps CrowS-Pairs, BBQ and WinoGender wholly
unseen for an evaluation such as ``qfair debias-eval``.

The split is decided per example from its content alone: a keyed hash of the
rendered context and choices (``content_key``), mapped to [0, 1) and compared
with the scan fraction. The same sentence pair therefore lands on the same
side whatever file, task or position it comes from, in the scan, in the
recommendation's validation and in a calibration set built from the probes.
The split itself (:class:`Split`, :func:`content_key`) lives in
:mod:`qfair.tasks.split`, below the model backends whose calibration draws on
it; this module re-exports it.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from qfair.tasks.split import SIDES, ProbeError, Split, content_key, doc_side  # noqa: F401 - re-exported

BIAS_KIND = "crows_pairs"
#: task kinds whose first two choices are a (stereotyping, less stereotyping) pair
BIAS_KINDS = ("crows_pairs", "stereoset")
DEFAULT_TASKS = "crows_pairs,arc_easy,piqa"


@dataclass
class Probes:
    """Probe documents of one side, tokenised, with their role (bias | general)."""

    docs: list[Any]
    encoded: list[Any]
    roles: list[str]
    side: str
    task_infos: list[dict[str, Any]] = field(default_factory=list)
    split_rows: dict[str, list] = field(default_factory=dict)  # every example (both sides)

    def __len__(self) -> int:
        return len(self.docs)

    @property
    def n_rows(self) -> int:
        return sum(e.n_rows for e in self.encoded)


def load_tasks(tasks: str | Iterable[str] | None, data_files: dict[str, Any] | None = None,
               limit: int | None = None, data_dir: Any = None, require_bias: bool = True) -> list[Any]:
    """Task objects for the probes (``qfair.tasks`` names or groups; default
    :data:`DEFAULT_TASKS`); ``data_dir``: a ``qfair data fetch`` directory;
    ``require_bias``: refuse tasks without a bias probe (a scan whose bias
    objective is elsewhere, e.g. generation probes, passes False)."""
    import qfair.tasks as T

    names = T.resolve(tasks if tasks else DEFAULT_TASKS)
    files = dict(data_files or {})
    unknown = sorted(set(files) - set(names))
    if unknown:
        raise ProbeError(f"--data-file given for {', '.join(unknown)}, which is not among the probe tasks "
                         f"({', '.join(names)})")
    objs = [T.get(n, data_file=files.get(n), limit=limit, data_dir=data_dir) for n in names]
    if require_bias and not any(t.kind in BIAS_KINDS for t in objs):
        raise ProbeError(f"the probe tasks ({', '.join(names)}) hold no bias probe; add crows_pairs_english, "
                         "crows_pairs_french or a stereoset task")
    return objs


def build_probes(task_objs: Sequence[Any], tokenizer: Any, split: Split, side: str,
                 require_bias: bool = True) -> Probes:
    """The documents of ``side`` ("scan" or "heldout"), tokenised; the split of
    every document is kept in ``split_rows``."""
    from qfair.dump.multiple_choice import check_doc, task_info
    from qfair.scoring import encode_example

    if side not in SIDES:
        raise ProbeError(f"unknown split side {side!r}; expected one of {', '.join(SIDES)}")
    docs, enc, roles, infos = [], [], [], []
    rows: dict[str, list] = {k: [] for k in ("example_id", "task", "group", "role", "side", "key")}
    seen: set[str] = set()
    for t in task_objs:
        role = "bias" if t.kind in BIAS_KINDS else "general"
        n = 0
        for d in t.docs():
            check_doc(t, d)
            if d.example_id in seen:
                raise ProbeError(f"{t.name}: example id {d.example_id!r} occurs twice")
            seen.add(d.example_id)
            key = content_key(d.context, d.choices)
            s = split.side(key)
            for k, v in (("example_id", d.example_id), ("task", d.task), ("group", d.group), ("role", role),
                         ("side", s), ("key", key)):
                rows[k].append(v)
            if s != side:
                continue
            docs.append(d)
            enc.append(encode_example(tokenizer, d.context, d.choices, t.target_delimiter))
            roles.append(role)
            n += 1
        info = task_info(t)
        info["n_examples"] = n
        infos.append(info)
    if not docs:
        raise ProbeError(f"the {side} side of the split {split} holds no example; use more data or another split")
    if require_bias and "bias" not in roles:
        raise ProbeError(f"the {side} side of the split {split} holds no bias probe; use more data or another split")
    return Probes(docs, enc, roles, side, infos, rows)
