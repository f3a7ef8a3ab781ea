"""The error class of qfair.compress (one line, for the user)."""
from __future__ import annotations


class CompressError(ValueError):
    """Bad quantizer settings or data, or a model the quantizer cannot walk."""
