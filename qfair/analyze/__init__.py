"""``qfair analyze``: from a base dump and quantized dumps to paper tables.

``compare(base, quant, ...)`` returns a :class:`Comparison` whose tables
(``summary``, ``examples``, ``tokens``, ``calibration``, ``strata``,
``groups``) are polars DataFrames; ``Comparison.write(dir)`` writes them.
Column reference: docs/analyze.md.
"""
from __future__ import annotations

from qfair.analyze.compare import Comparison, compare
from qfair.analyze.tokens import TokenChunk

__all__ = ["compare", "Comparison", "TokenChunk"]
