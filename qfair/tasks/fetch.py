"""``qfair data fetch``: the benchmarks' full evaluation splits from the
Hugging Face hub, written once on a machine with hub access as a data
directory (:mod:`qfair.tasks.datadir`) that offline machines read with
``--data-dir``.

Each hub source (dataset, config, split) is written once, as JSON Lines of its
rows exactly as the hub gives them (canonical JSON: sorted keys, UTF-8), which
is the schema ``--data-file`` reads; tasks sharing a source (truthfulqa_mc1
and _mc2, bbq and bbq_3choice, the WinoGender subsets) share its file. The
file's sha256 equals the ``source_hash`` a ``--data-file TASK=hf`` read
records for the same rows, and every row's example id is the same too.
Every task is read back from its file before the file takes its place, so a
split qfair cannot read is refused here, not on the compute node.

The ``datasets`` package (``pip install 'qfair[data]'``) is imported only when
a fetch runs; tests inject a ``loader`` instead.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import TaskError, canonical_json
from .datadir import MANIFEST_NAME, DataDir, SourceEntry, write_manifest
from .registry import SPECS, get, resolve

__all__ = ["FetchError", "HubSplit", "Loader", "FetchResult", "fetch", "hub_sources", "hub_loader", "source_file"]


class FetchError(TaskError):
    """A fetch that cannot go on: no ``datasets``, offline, a task without a hub source."""


@dataclass
class HubSplit:
    rows: list[dict[str, Any]]
    revision: str | None = None   # the dataset repository's commit, when the loader knows it


#: (dataset id, config or None, split) -> the split's rows
Loader = Callable[[str, "str | None", str], HubSplit]

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_sources(tasks: str | Iterable[str]) -> dict[tuple[str, str | None, str], list[str]]:
    """{(dataset, config, split): [task, ...]} for the tasks (groups expand);
    FetchError names a task that has no hub source (generation prompts, mc)."""
    out: dict[tuple[str, str | None, str], list[str]] = {}
    for name in resolve(tasks):
        hf = SPECS[name].hf
        if hf is None:
            raise FetchError(f"{name}: has no hub dataset to fetch (its data ships with qfair or comes from "
                             f"--data-file {name}=PATH)")
        out.setdefault(hf, []).append(name)
    return out


def source_file(source: tuple[str, str | None, str]) -> str:
    dataset, config, split = source
    return f"{dataset.replace('/', '--')}.{config or 'default'}.{split}.jsonl"


def hub_loader(dataset: str, config: str | None, split: str) -> HubSplit:
    """The rows of a hub split through ``datasets`` (imported here), read at
    the repository's current commit, which is recorded."""
    datasets = _datasets()
    revision = None
    try:  # pin the commit first, so the rows and the recorded revision agree
        from huggingface_hub import HfApi

        revision = HfApi().dataset_info(dataset).sha
    except Exception:  # noqa: BLE001 - the revision is recorded when known; the load below reports real failures
        revision = None
    try:
        ds = datasets.load_dataset(dataset, config, split=split, revision=revision)
    except Exception as exc:  # network, auth, missing config: one line for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FetchError(f"could not load hf:{dataset}/{config or 'default'}/{split}: {first}") from None
    return HubSplit([dict(r) for r in ds], revision)


def _datasets() -> Any:
    offline = [v for v in _OFFLINE_VARS if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")]
    if offline:
        raise FetchError(f"qfair data fetch needs the Hugging Face hub, but {offline[0]} is set (offline); run it "
                         f"on a machine with hub access and copy the directory")
    try:
        import datasets
    except ImportError:
        raise FetchError("qfair data fetch needs the 'datasets' package: pip install 'qfair[data]'") from None
    return datasets


@dataclass
class FetchResult:
    out: Path
    manifest: Path
    sources: list[SourceEntry] = field(default_factory=list)
    docs: dict[str, int] = field(default_factory=dict)   # task -> documents it reads from its file

    def text(self) -> str:
        lines = [f"{self.manifest}: {len(self.sources)} source(s), {len(self.docs)} task(s)"]
        for s in self.sources:
            rev = f"@{s.revision[:12]}" if s.revision else " (revision unknown)"
            lines.append(f"  {s.file}  {s.rows:,} rows  sha256 {s.sha256[:12]}  hf:{s.dataset}/"
                         f"{s.config or 'default'}/{s.split}{rev}")
            lines += [f"    {t}: {self.docs[t]:,} documents" for t in s.tasks]
        return "\n".join(lines)


def fetch(tasks: str | Iterable[str], out: str | os.PathLike, *, loader: Loader | None = None,
          log: Callable[[str], None] | None = None) -> FetchResult:
    """Write each task's hub split into ``out`` and list it in the manifest
    (kept entries of an earlier fetch into the same directory stay).
    ``loader`` defaults to :func:`hub_loader` (the hub through ``datasets``)."""
    from qfair.fsutil import atomic_write_bytes

    sources = hub_sources(tasks)
    if loader is None:
        _datasets()  # refuse in one line before any work
        loader = hub_loader
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise FetchError(f"--out {root}: exists and is not a directory")
    kept: dict[str, SourceEntry] = {}
    if (root / MANIFEST_NAME).exists():
        kept = dict(DataDir.read(root).sources)
    root.mkdir(parents=True, exist_ok=True)
    result = FetchResult(root, root / MANIFEST_NAME)
    for source, names in sources.items():
        dataset, config, split = source
        if log is not None:
            log(f"fetching hf:{dataset}/{config or 'default'}/{split} for {', '.join(names)}")
        got = loader(dataset, config, split)
        data = b"".join(canonical_json(row).encode("utf-8") + b"\n" for row in got.rows)
        name = source_file(source)
        # tasks of an earlier fetch that this file served stay listed (and are checked again)
        served = tuple(dict.fromkeys([*(kept[name].tasks if name in kept else ()), *names]))
        partial = root / f".partial-{name}"  # same suffix: read back as the final file will be
        atomic_write_bytes(partial, data)
        try:
            for t in served:  # a row qfair cannot read stops the fetch here, naming task, row and field
                result.docs[t] = get(t, data_file=partial).n_source_docs
        except TaskError:
            partial.unlink()
            raise
        os.replace(partial, root / name)
        entry = SourceEntry(name, dataset, config, split, got.revision, hashlib.sha256(data).hexdigest(),
                            len(got.rows), served)
        kept[name] = entry
        result.sources.append(entry)
        write_manifest(root, kept)  # after each source: an interrupted fetch keeps what it finished
    return result
