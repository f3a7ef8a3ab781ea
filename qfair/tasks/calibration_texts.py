"""Calibration texts for quantizers that calibrate (GPTQ, AWQ).

- ``generic``: ordinary text: each general task's built-in sample rendered as
  context + gold answer (BoolQ passages, HellaSwag activities, PIQA goals,
  ARC and OpenBookQA questions, story-cloze stories, TruthfulQA questions),
  taken round-robin across tasks;
- ``bias-balanced``: CrowS-Pairs sentence pairs, both sentences of every pair
  (so stereotype and anti-stereotype sentences are exactly balanced), pairs
  taken round-robin across bias types; from the built-in English and French
  samples or from ``data`` (a file in CrowS-Pairs' schema);
- a file: one text per line (``.txt``) or one ``{"text": ...}`` per line (``.jsonl``).

Generic and bias-balanced texts come from the *scan* side of the probe split
only (the same content hash as :mod:`qfair.tasks.split`), so no
example a scan or a recommendation evaluates on the held-out side is ever
seen by the quantizer. They are drawn from the tasks' built-in samples and
live with the tasks, below the model backends that calibrate on them.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qfair.errors import QfairError
from qfair.tasks.split import Split, content_key

GENERIC_TASKS = ("boolq", "hellaswag", "piqa", "arc_easy", "arc_challenge", "openbookqa", "xstorycloze_en",
                 "truthfulqa_mc1")
BIAS_TASKS = ("crows_pairs_english", "crows_pairs_french")
KINDS = ("generic", "bias-balanced")


class CalibrationError(QfairError):
    """Bad calibration settings or data (one line)."""


@dataclass(frozen=True)
class CalibrationSet:
    kind: str                 # generic | bias-balanced | file
    texts: tuple[str, ...]
    source: str
    split: str | None

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for t in self.texts:
            h.update(t.encode("utf-8") + b"\x1e")
        return h.hexdigest()

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "n_texts": len(self.texts), "sha256": self.sha256, "source": self.source,
                "split": self.split, "side": "scan" if self.split else None}


def _round_robin(groups: dict[str, list[Any]]) -> list[Any]:
    out: list[Any] = []
    keys = sorted(groups)
    i = 0
    while any(i < len(groups[k]) for k in keys):
        for k in keys:
            if i < len(groups[k]):
                out.append(groups[k][i])
        i += 1
    return out


def _scan_side(docs: Sequence[Any], split: Split) -> list[Any]:
    """Scan-side documents in a stable order (by their position in the hash)."""
    kept = [d for d in docs if split.side(content_key(d.context, d.choices)) == "scan"]
    return sorted(kept, key=lambda d: split.position(content_key(d.context, d.choices)))


def generic_texts(n: int, split: Split) -> CalibrationSet:
    import qfair.tasks as T

    groups = {}
    for name in GENERIC_TASKS:
        t = T.get(name)
        groups[name] = [(d.context + t.target_delimiter + d.choices[d.gold]).strip()
                        for d in _scan_side(list(t.docs()), split)]
    texts = _round_robin(groups)[:n]
    if not texts:
        raise CalibrationError("the scan side of the split holds no generic text")
    return CalibrationSet("generic", tuple(texts), "built-in samples: " + ",".join(GENERIC_TASKS), str(split))


def bias_balanced_texts(n: int, split: Split, data: str | Path | None = None) -> CalibrationSet:
    import qfair.tasks as T

    if data is not None:
        tasks = [T.get("crows_pairs_english", data_file=data)]
        source = str(data)
    else:
        tasks = [T.get(name) for name in BIAS_TASKS]
        source = "built-in samples: " + ",".join(BIAS_TASKS)
    by_type: dict[str, list[tuple[str, str]]] = {}
    for t in tasks:
        for d in _scan_side(list(t.docs()), split):
            by_type.setdefault(str(d.group), []).append((d.choices[0], d.choices[1]))
    pairs = _round_robin(by_type)[: max(1, n // 2)]
    if not pairs:
        raise CalibrationError("the scan side of the split holds no CrowS-Pairs pair")
    texts = tuple(s for p in pairs for s in p)
    return CalibrationSet("bias-balanced", texts, source, str(split))


def file_texts(path: str | Path, n: int) -> CalibrationSet:
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"calibration file {p} does not exist")
    texts: list[str] = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if p.suffix.lower() in (".jsonl", ".json"):
            try:
                row = json.loads(line)
            except ValueError as e:
                raise CalibrationError(f"{p} line {i}: not JSON ({e})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise CalibrationError(f"{p} line {i}: field 'text' must be a string")
            texts.append(row["text"])
        else:
            texts.append(line)
    if not texts:
        raise CalibrationError(f"calibration file {p} holds no text")
    return CalibrationSet("file", tuple(texts[:n]), str(p.resolve()), None)


def calibration_set(calib: str, n: int, split: str | Split = "0.5:0", data: str | Path | None = None
                    ) -> CalibrationSet:
    """The calibration texts named by a spec's ``calib`` option."""
    sp = Split.parse(split)
    if calib == "generic":
        return generic_texts(n, sp)
    if calib == "bias-balanced":
        return bias_balanced_texts(n, sp, data)
    return file_texts(calib, n)
