"""The dump: a directory of standard files (JSON, Parquet, .npy) written by
``qfair dump`` and read by ``qfair analyze``.

``open_dump(path)`` reads one; ``run_dump(...)`` (in ``qfair.dump.run``) writes one.
Nothing here imports torch; reading never executes code (no pickle).
"""
from __future__ import annotations

from typing import Any


class DumpError(ValueError):
    """A dump cannot be written, resumed or read; the message names file and field."""


def open_dump(path: Any) -> Any:
    from qfair.dump.reader import open_dump as _open

    return _open(path)


__all__ = ["DumpError", "open_dump"]
