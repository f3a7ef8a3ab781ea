"""``qfair analyze``: from a base dump and quantized dumps to paper tables.

``compare(base, quant, ...)`` returns a :class:`Comparison` whose tables
(``summary``, ``examples``, ``tokens``, ``calibration``, ``strata``,
``groups``) are polars DataFrames; ``Comparison.write(dir)`` writes them.
Column reference: docs/analyze.md.
"""
from __future__ import annotations

import importlib as _importlib
import sys as _sys

# The metric definitions moved below the dump (qfair.metrics); their old module
# names stay importable (``import qfair.analyze.task_kinds`` gives the moved module).
_MOVED = {"metrics": "qfair.metrics.example_metrics", "task_kinds": "qfair.metrics.task_kinds",
          "examples": "qfair.metrics.examples", "bias": "qfair.metrics.bias",
          "resampling": "qfair.metrics.resampling", "hate": "qfair.metrics.hate"}
for _old, _new in _MOVED.items():
    _sys.modules[f"{__name__}.{_old}"] = globals()[_old] = _importlib.import_module(_new)

from qfair.analyze.compare import Comparison, compare  # noqa: E402
from qfair.analyze.tokens import TokenChunk  # noqa: E402

__all__ = ["compare", "Comparison", "TokenChunk"]
