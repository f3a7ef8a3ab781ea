"""The dump: a directory of standard files (JSON, Parquet, .npy) written by
``qfair dump`` (or an importer) and read by ``qfair analyze``.

- ``open_dump(path)`` reads one (:mod:`qfair.dump.reader`);
- ``DumpWriter`` writes one of any kind (:mod:`qfair.dump.writer`);
- dump kinds and table schemas: :mod:`qfair.dump.kinds`, :mod:`qfair.dump.tables`;
- ``qfair.dump.run.dump`` / ``run_dump`` score tasks with a model into a dump.

Nothing here imports torch; reading never executes code (no pickle). The
format is documented in docs/format.md.
"""
from __future__ import annotations

from typing import Any

from qfair.errors import DumpError  # defined below the dump: the directory lock raises it too


def open_dump(path: Any) -> Any:
    from qfair.dump.reader import open_dump as _open

    return _open(path)


def __getattr__(name: str) -> Any:
    if name == "DumpWriter":
        from qfair.dump.writer import DumpWriter

        return DumpWriter
    raise AttributeError(f"module 'qfair.dump' has no attribute {name!r}")


__all__ = ["DumpError", "DumpWriter", "open_dump"]
