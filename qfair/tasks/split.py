"""The probe split: which side, *scan* or *held-out*, an example falls on.

The side is decided per example from its content alone: a keyed hash of the
rendered context and choices (:func:`content_key`), mapped to [0, 1) and
compared with the scan fraction. The same sentence pair therefore lands on
the same side whatever file, task or position it comes from: in a
sensitivity scan (:mod:`qfair.sensitivity.probes`), in a recommendation's
validation and in the calibration texts of a quantizer
(:mod:`qfair.tasks.calibration_texts`), which must never see the held-out
side. It lives with the tasks, below every layer that uses it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qfair.errors import QfairError

__all__ = ["SIDES", "ProbeError", "Split", "content_key", "doc_side"]

SIDES = ("scan", "heldout")


class ProbeError(QfairError):
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
