"""The base of every error that qfair reports to its user.

Each area of the library raises its own error type (``DumpError``,
``TaskError``, ``ModelError``, ``StudyError``, ...), and every one of them
derives from :class:`QfairError`: the message is one line that names the
file, field or option at fault and what was expected. The command line
catches this base and prints that line with a non-zero exit; anything else
is a bug and keeps its traceback.

This module is the ground floor: it imports nothing from qfair, so every
layer can derive from it. :class:`DumpError` lives here too (and is
re-exported by :mod:`qfair.dump`) because the directory lock
(:mod:`qfair.lock`), which sits below the dump, raises it.
"""
from __future__ import annotations

__all__ = ["QfairError", "DumpError"]


class QfairError(ValueError):
    """A problem the user can fix; the message names what and where.

    A ``ValueError`` subclass, so code (and tests) that catch ``ValueError``
    keep catching every qfair error.
    """


class DumpError(QfairError):
    """A dump cannot be written, resumed or read; the message names file and field."""
