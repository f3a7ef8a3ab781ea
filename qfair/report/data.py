"""Reading what ``qfair analyze`` wrote: the six tables, ``settings.json`` and
the provenance of the dumps it compared.

The tables are read from Parquet when present, else from CSV (``qfair analyze
--format csv``). Provenance comes from ``provenance.json`` in the analysis
directory when it matches ``settings.json`` (``qfair demo`` writes it, so the
directory travels alone), otherwise from the dumps' ``manifest.json`` files at
the paths ``settings.json`` records.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import polars as pl

from qfair.analyze.provenance import PROVENANCE_FILE, collect_provenance, write_provenance
from qfair.analyze.result import TABLES, AnalysisTables
from qfair.errors import QfairError

__all__ = ["ReportError", "AnalysisData", "AnalysisTables", "load_analysis", "read_table", "collect_provenance", "write_provenance",
           "PROVENANCE_FILE", "TABLES"]

REQUIRED = ("summary", "examples")


class ReportError(QfairError):
    """The analysis directory cannot be turned into a report; the message names file and field."""


# the tables of an analysis directory: the type qfair.compare returns (one type for both, qfair.analyze.result)
AnalysisData = AnalysisTables


# the token table can hold millions of rows: the report reads only these columns of it
TOKEN_COLUMNS = ("model", "task", "kl_pq", "delta_p", "top1_agree")


def read_table(d: Path, name: str) -> pl.DataFrame | None:
    """One table of an analysis directory: Parquet, else CSV; None when neither exists."""
    pq, csv = d / f"{name}.parquet", d / f"{name}.csv"
    try:
        if pq.is_file():
            if name == "tokens":
                lf = pl.scan_parquet(pq)
                have = lf.collect_schema().names()
                return lf.select([c for c in TOKEN_COLUMNS if c in have]).collect()
            return pl.read_parquet(pq)
        if csv.is_file():
            if csv.stat().st_size == 0:
                return pl.DataFrame()
            try:
                if name == "tokens":
                    lf = pl.scan_csv(csv, infer_schema_length=10_000)
                    have = lf.collect_schema().names()
                    return lf.select([c for c in TOKEN_COLUMNS if c in have]).collect()
                return pl.read_csv(csv, infer_schema_length=None)
            except pl.exceptions.NoDataError:
                return pl.DataFrame()
    except (OSError, pl.exceptions.PolarsError, ValueError) as e:
        f = pq if pq.is_file() else csv
        raise ReportError(f"{f}: cannot be read as the {name} table ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]})") from None
    return None


_NEEDED_COLUMNS = {
    "summary": ("model", "task", "metric", "n", "base", "quant", "diff", "ci_low", "ci_high", "p"),
    "examples": ("model", "task", "example_id", "base_conf", "quant_conf", "base_correct", "quant_correct"),
    "calibration": ("model", "role", "task", "binning", "n", "conf_mean", "acc_mean"),
    "groups": ("model", "task", "group", "metric", "n", "diff", "ci_low", "ci_high"),
    "tokens": ("model",),
    "strata": ("model", "task"),
}


def load_analysis(path: str | os.PathLike) -> AnalysisData:
    """Read an analysis directory written by ``qfair analyze`` (or ``Comparison.write``)."""
    d = Path(path)
    if not d.is_dir():
        raise ReportError(f"{d}: not a directory (expected the --out directory of qfair analyze)")
    tables: dict[str, pl.DataFrame] = {}
    for name in TABLES:
        df = read_table(d, name)
        if df is None:
            if name in REQUIRED:
                raise ReportError(f"{d / (name + '.parquet')}: missing (neither {name}.parquet nor {name}.csv); "
                                  "expected the output directory of qfair analyze")
            df = pl.DataFrame()
        if name == "examples" and df.height and "base_conf" not in df.columns:
            # a dump kind without choices (generation): no choice-level statistics to draw
            df = df.with_columns(pl.lit(None, dtype=pl.Float64).alias(c)
                                 for c in ("base_conf", "quant_conf", "base_correct", "quant_correct"))
        if df.height or name in REQUIRED:
            missing = [c for c in _NEEDED_COLUMNS[name] if c not in df.columns]
            if missing:
                raise ReportError(f"{d / name}.parquet: column '{missing[0]}' missing; expected the {name} table "
                                  "of qfair analyze")
        tables[name] = df
    settings: dict[str, Any] = {}
    notes: list[str] = []
    raw: dict[str, Any] = {}
    sp = d / "settings.json"
    if sp.is_file():
        try:
            raw = json.loads(sp.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ReportError(f"{sp}: not valid JSON ({e})") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("settings", {}), dict):
            raise ReportError(f"{sp}: expected a JSON object with field 'settings'")
        settings = dict(raw.get("settings") or {})
        notes = [str(n) for n in raw.get("notes") or []]
    # every table must come from the one run settings.json describes (no leftovers of another run)
    from qfair.analyze.outdir import check_run_files

    used = [f for name in TABLES for f in (d / f"{name}.parquet", d / f"{name}.csv") if f.is_file()]
    used = [f for f in used if f.suffix == ".parquet" or not (f.with_suffix(".parquet")).is_file()]
    why = check_run_files(d, raw, used)
    if why:
        raise ReportError(why)
    data = AnalysisData(d, settings=settings, notes=notes, **tables)
    data.provenance = collect_provenance(d, settings)
    return data
