"""Word lists matched in generated text: the rate of gendered terms, of
negative / hurtful terms, or of any list a user brings (e.g. HurtLex).

Matching rules (tested on known sentences):

- text and terms are Unicode-normalised (NFC) and case-folded, so "Élise",
  "ÉLISE" and "élise" match one another, and a decomposed "é" matches a
  composed one; accents are kept ("mère" does not match "mere");
- words are maximal runs of letters/digits (``\\w+``): apostrophes, hyphens
  and punctuation separate them, so a term never matches inside a longer word
  ("he" does not match "the" or "hello") and "l'homme" contains "homme";
- a term of several words ("grand-mère", "people of color") matches that
  sequence of words; overlapping matches are resolved longest first, left to
  right, each word counted once;
- rate = matched words / words of the continuation (NaN without words).

A lexicon holds terms per language: the built-in ``gendered`` and ``negative``
lists have English and French parts, applied to continuations of prompts in
that language (other languages: no rate). A user file (``--lexicon
NAME=FILE``) is plain text (one term per line, ``#`` comments; every
language) or CSV/TSV with a header naming a ``lemma``, ``term`` or ``word``
column and optionally a ``lang`` column (HurtLex's TSV files load as they
are). NAME ``gendered`` or ``negative`` replaces the built-in list; any other
NAME adds one.
"""
from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from qfair.errors import QfairError

__all__ = ["Lexicon", "words", "builtin_lexicons", "load_lexicon", "lexicons_from_options", "BUILTIN",
           "LexiconError"]

BUILTIN = ("gendered", "negative")
_WORD = re.compile(r"\w+")
ANY = "*"  # the language key of terms that apply to every language


class LexiconError(QfairError):
    """A lexicon file cannot be read; the message names the file and line."""


def normalize(text: str) -> str:
    return unicodedata.normalize("NFC", text).casefold()


def words(text: str) -> list[str]:
    """The words of ``text`` after NFC normalisation and case folding."""
    return _WORD.findall(normalize(text))


@dataclass
class Lexicon:
    name: str
    terms: dict[str, set[tuple[str, ...]]] = field(default_factory=dict)   # lang (or ANY) -> term word tuples
    source: str = ""

    def add(self, term: str, lang: str = ANY) -> None:
        w = tuple(words(term))
        if w:
            self.terms.setdefault(lang.strip().lower() or ANY, set()).add(w)

    def terms_for(self, lang: str | None) -> set[tuple[str, ...]]:
        out = set(self.terms.get(ANY, set()))
        if lang:
            out |= self.terms.get(lang.lower(), set())
        return out

    def applies_to(self, lang: str | None) -> bool:
        return bool(self.terms_for(lang))

    def count(self, text: str, lang: str | None = None) -> tuple[int, int]:
        """(matched words, words) of ``text`` for the terms of ``lang``."""
        return match_count(words(text), self.terms_for(lang))

    def rate(self, text: str, lang: str | None = None) -> float:
        if not self.applies_to(lang):
            return float("nan")
        k, n = self.count(text, lang)
        return k / n if n else float("nan")

    @property
    def n_terms(self) -> int:
        return sum(len(v) for v in self.terms.values())


def match_count(ws: Sequence[str], terms: set[tuple[str, ...]]) -> tuple[int, int]:
    """Matched words (longest term first, left to right, no overlap) and the word count."""
    if not terms:
        return 0, len(ws)
    lengths = sorted({len(t) for t in terms}, reverse=True)
    i = matched = 0
    n = len(ws)
    while i < n:
        for L in lengths:
            if i + L <= n and tuple(ws[i:i + L]) in terms:
                matched += L
                i += L
                break
        else:
            i += 1
    return matched, n


def _read_lines(text: str, lex: Lexicon, lang: str = ANY) -> None:
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            lex.add(line, lang)


def builtin_lexicons() -> dict[str, Lexicon]:
    """The built-in ``gendered`` and ``negative`` lists (English and French parts)."""
    out = {}
    base = resources.files(__package__).joinpath("data")
    for name in BUILTIN:
        lex = Lexicon(name, source=f"builtin {name} (en, fr)")
        for lang in ("en", "fr"):
            _read_lines(base.joinpath(f"{name}.{lang}.txt").read_text(encoding="utf-8"), lex, lang)
        out[name] = lex
    return out


def load_lexicon(name: str, path: str | Path) -> Lexicon:
    """A lexicon from a user file (see the module docstring for the formats)."""
    p = Path(path)
    if not p.is_file():
        raise LexiconError(f"--lexicon {name}={p}: file does not exist" if not p.exists() else
                           f"--lexicon {name}={p}: not a file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise LexiconError(f"--lexicon {name}={p}: cannot read it as UTF-8 text ({e})") from None
    lex = Lexicon(name, source=str(p))
    first = text.splitlines()[0] if text.strip() else ""
    delim = "\t" if "\t" in first else ("," if "," in first else None)
    header = [h.strip().lower() for h in first.split(delim)] if delim else []
    col = next((c for c in ("lemma", "term", "word") if c in header), None)
    if delim and col is None:
        raise LexiconError(f"--lexicon {name}={p}: line 1: a table needs a column named lemma, term or word "
                           f"(got {', '.join(header)})")
    if col is None:
        _read_lines(text, lex)
    else:
        reader = csv.DictReader(io.StringIO(text), delimiter=delim)
        reader.fieldnames = [h.strip().lower() for h in reader.fieldnames or []]
        for i, row in enumerate(reader, 2):
            term = row.get(col)
            if term is None:
                raise LexiconError(f"--lexicon {name}={p}: line {i}: column {col!r} missing")
            lex.add(term, (row.get("lang") or ANY))
    if lex.n_terms == 0:
        raise LexiconError(f"--lexicon {name}={p}: holds no term")
    return lex


def lexicons_from_options(values: Iterable[str] | Mapping[str, str | Path] | None) -> dict[str, Lexicon]:
    """The built-in lists, replaced or extended by ``NAME=FILE`` options."""
    out = builtin_lexicons()
    items = values.items() if isinstance(values, Mapping) else [_split(v) for v in (values or [])]
    seen: set[str] = set()
    for name, path in items:
        if name in seen:
            raise LexiconError(f"--lexicon {name}: given twice")
        seen.add(name)
        out[name] = load_lexicon(name, path)
    return out


def _split(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
        raise LexiconError(f"--lexicon expects NAME=FILE, got {value!r}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise LexiconError(f"--lexicon {name}: NAME may hold letters, digits and _ only")
    return name, path
