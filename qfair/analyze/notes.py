"""Notes of an analysis as a reader sees them: one line per kind of note.

An analysis over many tasks and models repeats the same note with another
place or count in it ("toy_mc/nf4: spearman(entropy,abs_dconf) undefined (the
shift is constant over 4 examples); no row", once per task and shift).
:func:`collapse_notes` prints each kind once, with how many times it came and
the first instance as the example; a note that came once stays as it is.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["collapse_notes", "note_pattern"]

_PLACE = re.compile(r"^[^\s:]+:\s")                   # "task/model: " in front
_CALL = re.compile(r"\b([A-Za-z_][\w.]*)\(([^()]*)\)")  # spearman(entropy,kl_pq) -> spearman(…)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*(?:e[-+]?\d+)?")


def note_pattern(note: str) -> str:
    """What a note says with its place, its arguments and its numbers left out."""
    s = _PLACE.sub("", note.strip(), count=1)
    s = _CALL.sub(lambda m: f"{m.group(1)}(…)", s)
    return _NUMBER.sub("#", s)


def collapse_notes(notes: Iterable[str]) -> list[str]:
    """The notes in order of first appearance, one line per pattern; a pattern
    seen n > 1 times reads "(n notes like this) <the first one>"."""
    first: dict[str, str] = {}
    count: dict[str, int] = {}
    for n in notes:
        key = note_pattern(n)
        first.setdefault(key, n)
        count[key] = count.get(key, 0) + 1
    return [first[k] if count[k] == 1 else f"({count[k]} notes like this) {first[k]}" for k in first]
