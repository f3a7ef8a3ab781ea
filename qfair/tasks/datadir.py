"""A data directory written by ``qfair data fetch``: each hub source's full
evaluation split as one JSON Lines file in the dataset's own field names (the
schema ``--data-file`` reads), and a manifest, ``qfair-data.json``, naming
each file's source (dataset id, config, split, revision when known), its
sha256 and the tasks it serves.

``--data-dir DIR`` reads a task listed in the manifest from its file, after
checking the file's sha256 against the manifest; a task the directory does not
hold keeps its other source (``--data-file``, else the built-in sample).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .base import TaskError

MANIFEST_NAME = "qfair-data.json"
FORMAT = "qfair-data/1"


@dataclass(frozen=True)
class SourceEntry:
    """One fetched split: where it came from and what its file must hash to."""

    file: str                    # relative to the data directory
    dataset: str
    config: str | None
    split: str
    revision: str | None         # the hub commit the rows were read at, when known
    sha256: str
    rows: int
    tasks: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        return d


class DataDir:
    """A fetched data directory, its manifest read and checked (files are
    hashed when a task is read, not here)."""

    def __init__(self, root: Path, sources: dict[str, SourceEntry]):
        self.root = root
        self.sources = sources           # by file name
        self.tasks = {t: s for s in sources.values() for t in s.tasks}

    @classmethod
    def read(cls, root: str | os.PathLike) -> DataDir:
        root = Path(root)
        if not root.is_dir():
            raise TaskError(f"--data-dir {root}: no such directory (write it with: qfair data fetch TASK... "
                            f"--out {root})")
        path = root / MANIFEST_NAME
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TaskError(f"--data-dir {root}: holds no {MANIFEST_NAME} (not written by qfair data fetch)") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise TaskError(f"{path}: unreadable manifest ({e})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT or not isinstance(raw.get("sources"), list):
            raise TaskError(f"{path}: not a {FORMAT} manifest (expected format '{FORMAT}' and a list 'sources')")
        sources: dict[str, SourceEntry] = {}
        for i, item in enumerate(raw["sources"]):
            try:
                entry = SourceEntry(file=str(item["file"]), dataset=str(item["dataset"]), config=item.get("config"),
                                    split=str(item["split"]), revision=item.get("revision"),
                                    sha256=str(item["sha256"]), rows=int(item["rows"]),
                                    tasks=tuple(str(t) for t in item["tasks"]))
            except (KeyError, TypeError, ValueError) as e:
                raise TaskError(f"{path}: field 'sources[{i}]' is incomplete ({e!r}); fetch again") from None
            if Path(entry.file).name != entry.file:
                raise TaskError(f"{path}: field 'sources[{i}].file' must be a file name in the directory, "
                                f"got {entry.file!r}")
            sources[entry.file] = entry
        return cls(root, sources)

    def read_task(self, task: str) -> tuple[Path, bytes] | None:
        """The file holding ``task`` and its bytes, checked against the
        manifest's sha256; None when the directory does not hold the task."""
        entry = self.tasks.get(task)
        if entry is None:
            return None
        path = self.root / entry.file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise TaskError(f"{task}: {path} is listed in {self.root / MANIFEST_NAME} but missing; "
                            f"fetch it again") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256:
            raise TaskError(f"{task}: {path} has sha256 {digest[:12]}..., not the {entry.sha256[:12]}... its "
                            f"manifest records (changed since it was fetched); fetch it again")
        return path, data


def write_manifest(root: Path, sources: dict[str, SourceEntry]) -> Path:
    """Write (atomically) the manifest listing ``sources``."""
    from qfair.fsutil import atomic_write_text

    body = {"format": FORMAT, "sources": [sources[k].to_json() for k in sorted(sources)]}
    path = root / MANIFEST_NAME
    atomic_write_text(path, json.dumps(body, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    return path
