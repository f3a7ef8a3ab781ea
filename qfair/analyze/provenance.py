"""Provenance of an analysis: the compared dumps' manifests (trimmed), kept in
``provenance.json`` beside the tables so that the analysis directory alone is
enough for ``qfair report`` (the dumps may move or be deleted later)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["PROVENANCE_FILE", "collect_provenance", "write_provenance"]

PROVENANCE_FILE = "provenance.json"
# manifest sections kept in the provenance (the shard list and plan are bulky and not provenance)
_MANIFEST_KEYS = ("format", "format_version", "kind", "status", "created_by", "model", "tokenizer", "vocab_size",
                  "tasks", "scoring", "storage", "counts", "run", "libraries")


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
