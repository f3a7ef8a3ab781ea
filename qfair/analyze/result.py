"""The tables of one analysis: what :func:`qfair.compare` returns and what
``qfair report`` reads back from the directory it was written to.

``summary``, ``examples``, ``tokens``, ``calibration``, ``strata`` and
``groups`` always exist (empty where the dumps hold nothing for them);
``extra`` holds the tables of a dump kind's own analysis. ``path`` is the
analysis directory the tables were read from (None for a comparison not yet
written), ``provenance`` what is known of the dumps compared.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

__all__ = ["AnalysisTables", "TABLES"]

TABLES = ("summary", "examples", "tokens", "calibration", "strata", "groups")


@dataclass
class AnalysisTables:
    """One analysis's tables and settings (``qfair.analyze.Comparison`` and
    ``qfair.report.data.AnalysisData`` are this type)."""

    path: Path | None = None
    _: KW_ONLY
    summary: pl.DataFrame
    examples: pl.DataFrame
    tokens: pl.DataFrame
    calibration: pl.DataFrame
    strata: pl.DataFrame
    groups: pl.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, pl.DataFrame] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        """Quantized model labels, in the order analyze compared them."""
        labels = list(self.settings.get("models") or [])
        seen = self.summary["model"].unique(maintain_order=True).to_list() if "model" in self.summary.columns else []
        return [m for m in labels if m in seen] + [m for m in seen if m not in labels]

    @property
    def tasks(self) -> list[str]:
        if "task" not in self.examples.columns:
            return []
        return self.examples["task"].unique(maintain_order=True).to_list()

    def table_names(self) -> list[str]:
        return [*TABLES, *self.extra]

    def table(self, name: str) -> pl.DataFrame:
        if name in TABLES:
            return getattr(self, name)
        if name in self.extra:
            return self.extra[name]
        raise KeyError(f"unknown table {name!r}; tables: {', '.join(self.table_names())}")

    def tables(self) -> dict[str, pl.DataFrame]:
        return {name: self.table(name) for name in self.table_names()}

    def write(self, out_dir: str | os.PathLike, formats: Sequence[str] = ("parquet", "csv", "md")) -> list[Path]:
        """Write every table in each format (parquet, csv, md; latex for the summary) as one
        analysis directory: an earlier analysis there is replaced as a whole, atomically
        (:mod:`qfair.analyze.outdir`)."""
        from qfair.analyze.outdir import write_analysis

        return write_analysis(self, Path(out_dir), formats)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{t}={self.table(t).shape}" for t in self.table_names())
        return f"{type(self).__name__}({shapes})"
