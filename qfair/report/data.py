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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

__all__ = ["ReportError", "AnalysisData", "load_analysis", "collect_provenance", "write_provenance",
           "PROVENANCE_FILE", "TABLES"]

TABLES = ("summary", "examples", "tokens", "calibration", "strata", "groups")
REQUIRED = ("summary", "examples")
PROVENANCE_FILE = "provenance.json"
# manifest sections kept in the provenance (the shard list and plan are bulky and not provenance)
_MANIFEST_KEYS = ("format", "format_version", "status", "created_by", "model", "tokenizer", "vocab_size",
                  "tasks", "scoring", "storage", "counts", "run", "libraries")


class ReportError(ValueError):
    """The analysis directory cannot be turned into a report; the message names file and field."""


@dataclass
class AnalysisData:
    path: Path
    summary: pl.DataFrame
    examples: pl.DataFrame
    tokens: pl.DataFrame
    calibration: pl.DataFrame
    strata: pl.DataFrame
    groups: pl.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
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


# the token table can hold millions of rows: the report reads only these columns of it
TOKEN_COLUMNS = ("model", "task", "kl_pq", "delta_p", "top1_agree")


def _read_table(d: Path, name: str) -> pl.DataFrame | None:
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
        df = _read_table(d, name)
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
    sp = d / "settings.json"
    if sp.is_file():
        try:
            raw = json.loads(sp.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ReportError(f"{sp}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ReportError(f"{sp}: expected a JSON object with field 'settings'")
        settings = dict(raw.get("settings") or {})
        notes = [str(n) for n in raw.get("notes") or []]
    data = AnalysisData(d, settings=settings, notes=notes, **tables)
    data.provenance = collect_provenance(d, settings)
    return data


def _trim_manifest(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in _MANIFEST_KEYS if k in m}


def _find_dump(p: str, analysis_dir: Path) -> Path | None:
    cand = Path(p)
    tries = [cand] if cand.is_absolute() else [cand, analysis_dir / cand, analysis_dir.parent / cand]
    for c in tries:
        if (c / "manifest.json").is_file():
            return c
    return None


def _dump_entries(settings: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(label, role, recorded path) of every dump the analysis compared."""
    out = []
    if settings.get("base"):
        out.append(("base", "base", str(settings["base"])))
    quants = list(settings.get("quant") or [])
    labels = list(settings.get("models") or [])
    for i, q in enumerate(quants):
        out.append((labels[i] if i < len(labels) else Path(q).name, "quant", str(q)))
    return out


def collect_provenance(analysis_dir: str | os.PathLike, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"dumps": {label: {"role", "path", "manifest" | "missing"}}, "analysis": settings, "source": ...}``."""
    d = Path(analysis_dir)
    if settings is None:
        sp = d / "settings.json"
        try:
            settings = dict(json.loads(sp.read_text(encoding="utf-8")).get("settings") or {})
        except (OSError, ValueError, AttributeError):
            settings = {}
    entries = _dump_entries(settings)
    pp = d / PROVENANCE_FILE
    if pp.is_file():
        try:
            saved = json.loads(pp.read_text(encoding="utf-8"))
            recorded = [(k, v.get("role"), v.get("path")) for k, v in (saved.get("dumps") or {}).items()]
            if saved.get("format") == "qfair-provenance" and (not entries or recorded == entries):
                saved["source"] = str(pp)
                return saved
        except (OSError, ValueError, AttributeError):
            pass
    dumps: dict[str, Any] = {}
    for label, role, p in entries:
        entry: dict[str, Any] = {"role": role, "path": p}
        found = _find_dump(p, d)
        if found is None:
            entry["missing"] = f"{p}/manifest.json not found (recorded in {d / 'settings.json'})"
        else:
            try:
                entry["manifest"] = _trim_manifest(json.loads((found / "manifest.json").read_text(encoding="utf-8")))
            except (OSError, ValueError) as e:
                entry["missing"] = f"{found / 'manifest.json'}: unreadable ({e})"
        dumps[label] = entry
    return {"format": "qfair-provenance", "dumps": dumps, "analysis": settings,
            "source": "dump manifests at the paths in settings.json" if entries else "none (no settings.json)"}


def write_provenance(analysis_dir: str | os.PathLike) -> Path:
    """Copy the compared dumps' manifests (trimmed) into ``analysis_dir/provenance.json``
    so that the analysis directory alone is enough for ``qfair report``."""
    d = Path(analysis_dir)
    prov = collect_provenance(d)
    prov.pop("source", None)
    out = d / PROVENANCE_FILE
    tmp = d / f".{PROVENANCE_FILE}.tmp"
    tmp.write_text(json.dumps(prov, indent=1, default=str, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return out
