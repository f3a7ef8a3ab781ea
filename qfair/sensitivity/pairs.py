"""Bias probe pairs for the fairness term of ``gptq:fair=ALPHA`` (qfair.compress.fair).

A pair is two texts that differ in the social group they are about: the more
stereotyping one first. Sources (``fair_probes=``), task names joined by ``+``:

- ``crows_pairs_english``, ``crows_pairs_french`` (group ``crows_pairs``):
  ``sent_more`` and ``sent_less``;
- ``stereoset_intrasentence``, ``stereoset_intersentence`` (group
  ``stereoset``): the context followed by the stereotype option, and by the
  anti-stereotype option (the unrelated option is not used);
- ``bbq``: the context and question followed by the answer naming the
  stereotyped group, and by the answer naming the other person (examples
  where the two named answers are not one stereotyped and one not are skipped);
- a JSONL file of pairs, one ``{"sent_more": ..., "sent_less": ...}`` per line.

Every pair comes from the *scan* side of the probe split only, decided by the
same keyed content hash as every scan and evaluation
(:mod:`qfair.sensitivity.probes`): the hash of the built-in example as the
tasks render it, and for a file the hash of ``("", [sent_more, sent_less])``,
which is how a CrowS-Pairs example is keyed, so a user file holding
CrowS-Pairs sentences is split exactly as the CrowS-Pairs evaluation is. Pairs
are taken round-robin across tasks and bias types, in split-hash order.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qfair.sensitivity.probes import Split, content_key

PAIR_TASKS = ("crows_pairs_english", "crows_pairs_french", "stereoset_intrasentence", "stereoset_intersentence",
              "bbq")
PAIR_GROUPS = {"crows_pairs": ("crows_pairs_english", "crows_pairs_french"),
               "stereoset": ("stereoset_intrasentence", "stereoset_intersentence")}
DEFAULT_PROBES = "crows_pairs"


class PairError(ValueError):
    """Bad fairness probe settings or data (one line)."""


@dataclass(frozen=True)
class PairSet:
    pairs: tuple[tuple[str, str], ...]
    source: str
    split: str

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for a, b in self.pairs:
            h.update(a.encode("utf-8") + b"\x1f" + b.encode("utf-8") + b"\x1e")
        return h.hexdigest()

    def info(self) -> dict[str, Any]:
        return {"n_pairs": len(self.pairs), "sha256": self.sha256, "source": self.source, "split": self.split,
                "side": "scan"}


def parse_probes(text: str) -> str:
    """The canonical ``fair_probes`` value: task or group names joined by ``+``
    (checked, repeats dropped) or the absolute path of an existing file."""
    s = text.strip()
    names: list[str] = []
    for part in (p.strip().lower() for p in s.split("+")):
        if part not in PAIR_GROUPS and part not in PAIR_TASKS:
            if Path(s).expanduser().is_file():
                return str(Path(s).expanduser().resolve())
            raise PairError(f"unknown probe task {part!r}; expected task names joined by '+' from "
                            f"{', '.join(list(PAIR_GROUPS) + list(PAIR_TASKS))}, or a JSONL file of pairs")
        if part not in names:
            names.append(part)
    return "+".join(names)


def _members(value: str) -> list[str]:
    out: list[str] = []
    for part in value.split("+"):
        out += [m for m in PAIR_GROUPS.get(part, (part,)) if m not in out]
    return out


def _text(context: str, delimiter: str, choice: str) -> str:
    return (context + delimiter + choice).strip()


def doc_pair(task: Any, doc: Any) -> tuple[str, str] | None:
    """(more stereotyping, less stereotyping) text of one built-in example, or None."""
    from qfair.tasks.formats import BBQ_BIASED, BBQ_UNKNOWN_ANSWER

    d = task.target_delimiter
    if task.kind == "crows_pairs":
        return _text(doc.context, d, doc.choices[0]), _text(doc.context, d, doc.choices[1])
    if task.kind == "stereoset":
        return _text(doc.context, d, doc.choices[0]), _text(doc.context, d, doc.choices[1])
    if task.kind == "bbq":
        named = [k for k, code in enumerate(doc.labels or []) if not code & BBQ_UNKNOWN_ANSWER]
        biased = [k for k in named if doc.labels[k] & BBQ_BIASED]
        other = [k for k in named if not doc.labels[k] & BBQ_BIASED]
        if len(biased) != 1 or len(other) != 1:
            return None
        return _text(doc.context, d, doc.choices[biased[0]]), _text(doc.context, d, doc.choices[other[0]])
    raise PairError(f"task {task.name!r} holds no pairs")


def _round_robin(groups: dict[str, list[Any]]) -> list[Any]:
    out: list[Any] = []
    keys = sorted(groups)
    i = 0
    while any(i < len(groups[k]) for k in keys):
        out += [groups[k][i] for k in keys if i < len(groups[k])]
        i += 1
    return out


def file_pairs(path: str | Path) -> list[tuple[str, str]]:
    p = Path(path)
    out: list[tuple[str, str]] = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise PairError(f"fair_probes file {p} line {i}: not JSON; expected {{\"sent_more\": ..., "
                            f"\"sent_less\": ...}}") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k].strip()
                                                for k in ("sent_more", "sent_less")):
            raise PairError(f"fair_probes file {p} line {i}: fields 'sent_more' and 'sent_less' must be "
                            f"non-empty strings")
        out.append((row["sent_more"], row["sent_less"]))
    if not out:
        raise PairError(f"fair_probes file {p} holds no pairs; expected one JSON object with 'sent_more' and "
                        f"'sent_less' per line")
    return out


def probe_pairs(probes: str, n: int, split: str | Split = "0.5:0") -> PairSet:
    """Up to ``n`` scan-side pairs from ``probes`` (see the module doc)."""
    import qfair.tasks as T

    sp = Split.parse(split)
    value = parse_probes(probes)
    groups: dict[str, list[tuple[float, tuple[str, str]]]] = {}
    if Path(value).is_absolute():
        for more, less in file_pairs(value):
            key = content_key("", [more, less])
            if sp.side(key) == "scan":
                groups.setdefault("file", []).append((sp.position(key), (more, less)))
        source = value
    else:
        for name in _members(value):
            t = T.get(name)
            for doc in t.docs():
                key = content_key(doc.context, doc.choices)
                if sp.side(key) != "scan":
                    continue
                pair = doc_pair(t, doc)
                if pair is not None:
                    groups.setdefault(f"{name}/{doc.group}", []).append((sp.position(key), pair))
        source = "built-in samples: " + value
    ordered = {k: [p for _, p in sorted(v)] for k, v in groups.items()}
    pairs = _round_robin(ordered)[:n]
    if not pairs:
        raise PairError(f"fair_probes={probes}: the scan side of the split {sp} holds no pair; use more data or "
                        f"another split")
    return PairSet(tuple(pairs), source, str(sp))
