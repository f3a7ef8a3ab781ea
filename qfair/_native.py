"""Import the compiled core with a message that says how to build it."""
from __future__ import annotations

try:
    from qfair import _core as core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        "qfair's C++ extension (qfair._core) is not built or failed to load: "
        f"{exc}. Install the package with `pip install .` (or `make install` in a "
        "source checkout; after editing cpp/ run `make build`)."
    ) from exc
