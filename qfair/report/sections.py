"""The report as a list of sections: the registry ``qfair report`` renders in order.

Each section is declared by the module that draws it (:class:`Section`: its
anchor and title, what it shows, the tables it needs, how it renders and the
figures it draws). The sections every analysis has are listed here; a dump
kind's own sections (``DumpKind.report``, e.g. the generation and text kinds')
follow the headline in an analysis of that kind; :func:`register_section` adds
one from elsewhere (a plugin).
"""
from __future__ import annotations

from typing import Any

from qfair.report import accuracy, bias, calibration, families, groups, headline, provenance, strata, summary, tokens
from qfair.report.common import Section

__all__ = ["Section", "SECTIONS", "register_section", "report_sections", "analysis_kind"]

#: the sections of every analysis, in the order the page shows them
SECTIONS: list[Section] = [headline.SECTION, calibration.SECTION, tokens.SECTION, strata.SECTION, accuracy.SECTION,
                           groups.SECTION, bias.SECTION, families.SECTION, summary.SECTION, provenance.SECTION]


def register_section(section: Section, *, after: str = "families") -> Section:
    """Add a section to every report, after the section ``after``."""
    if any(s.id == section.id for s in SECTIONS):
        raise ValueError(f"report section {section.id!r} is registered twice")
    at = next((i for i, s in enumerate(SECTIONS) if s.id == after), None)
    if at is None:
        raise ValueError(f"report section {section.id!r}: no section {after!r} to follow")
    SECTIONS.insert(at + 1, section)
    return section


def analysis_kind(data: Any) -> Any:
    """The dump kind the analysis compared (``settings.json``'s kind); None when
    it is not registered here (a plugin that is not installed)."""
    from qfair.dump import DumpError
    from qfair.dump.kinds import get_kind

    try:
        return get_kind(data.settings.get("kind"))
    except DumpError:
        return None


def kind_sections(kind: Any) -> list[Section]:
    """The sections a dump kind names for its own tables (``DumpKind.report``)."""
    from qfair.dump.kinds import resolve

    return list(resolve(kind.report)) if kind is not None and kind.report else []


def report_sections(data: Any) -> list[Section]:
    """The sections of this analysis's report, in order: the headline, the dump
    kind's own sections, then the others."""
    own = kind_sections(analysis_kind(data))
    return [SECTIONS[0], *own, *SECTIONS[1:]]
