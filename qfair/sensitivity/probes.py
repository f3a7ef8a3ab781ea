"""Probe examples of a sensitivity scan and their split into a *scan* side and
a *held-out* side.

Probe tasks are ordinary qfair tasks. CrowS-Pairs tasks (task kind
``crows_pairs``) are the bias probes; every other task is a general task
(accuracy). Generation probes are not part of the scan yet.

The split is decided per example from its content alone: a keyed hash of the
rendered context and choices (``content_key``), mapped to [0, 1) and compared
with the scan fraction. The same sentence pair therefore lands on the same
side whatever file, task or position it comes from, in the scan, in the
recommendation's validation and in a calibration set built from the probes.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

SIDES = ("scan", "heldout")
BIAS_KIND = "crows_pairs"
DEFAULT_TASKS = "crows_pairs,arc_easy,piqa"


class ProbeError(ValueError):
    """Bad probe tasks or split settings (one line, for the user)."""


@dataclass(frozen=True)
class Split:
    """``fraction`` of the examples go to the scan side, the rest is held out;
    ``seed`` keys the hash."""

    fraction: float = 0.5
    seed: int = 0

    @classmethod
    def parse(cls, text: str | Split | None) -> Split:
        """``"0.5"`` or ``"0.5:7"`` (fraction[:seed])."""
        if isinstance(text, Split):
            return text
        if text is None or not str(text).strip():
            return cls()
        frac, _, seed = str(text).strip().partition(":")
        try:
            f = float(frac)
            s = int(seed) if seed.strip() else 0
        except ValueError:
            raise ProbeError(f"bad split {text!r}; expected FRACTION[:SEED], e.g. 0.5:0") from None
        if not 0.0 < f < 1.0:
            raise ProbeError(f"bad split {text!r}: the scan fraction must lie strictly between 0 and 1")
        return cls(f, s)

    def __str__(self) -> str:
        return f"{self.fraction:g}:{self.seed}"

    def position(self, key: str) -> float:
        h = hashlib.sha256(f"qfair-split\x1f{self.seed}\x1f{key}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2.0 ** 64

    def side(self, key: str) -> str:
        return "scan" if self.position(key) < self.fraction else "heldout"


def content_key(context: str, choices: Sequence[str]) -> str:
    """The identity of an example for the split: its rendered text only."""
    h = hashlib.sha256()
    h.update(context.encode("utf-8"))
    for c in choices:
        h.update(b"\x1f" + c.encode("utf-8"))
    return h.hexdigest()[:24]


def doc_side(doc: Any, split: Split) -> str:
    return split.side(content_key(doc.context, doc.choices))


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
               limit: int | None = None, data_dir: Any = None) -> list[Any]:
    """Task objects for the probes (``qfair.tasks`` names or groups; default
    :data:`DEFAULT_TASKS`); ``data_dir``: a ``qfair data fetch`` directory."""
    import qfair.tasks as T

    names = T.resolve(tasks if tasks else DEFAULT_TASKS)
    files = dict(data_files or {})
    unknown = sorted(set(files) - set(names))
    if unknown:
        raise ProbeError(f"--data-file given for {', '.join(unknown)}, which is not among the probe tasks "
                         f"({', '.join(names)})")
    objs = [T.get(n, data_file=files.get(n), limit=limit, data_dir=data_dir) for n in names]
    if not any(t.kind == BIAS_KIND for t in objs):
        raise ProbeError(f"the probe tasks ({', '.join(names)}) hold no bias probe; add crows_pairs_english "
                         "or crows_pairs_french")
    return objs


def build_probes(task_objs: Sequence[Any], tokenizer: Any, split: Split, side: str) -> Probes:
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
        role = "bias" if t.kind == BIAS_KIND else "general"
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
    if "bias" not in roles:
        raise ProbeError(f"the {side} side of the split {split} holds no bias probe; use more data or another split")
    return Probes(docs, enc, roles, side, infos, rows)
