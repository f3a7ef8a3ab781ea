"""How every command reports a problem the user can fix: one line, exit status 1.

The library raises its own error types (``DumpError``, ``TaskError``,
``ModelError``, ...), all derived from :class:`qfair.errors.QfairError`, with a
message that names the file, field or option; :func:`reported` turns them, and
file-system errors, into a one-line ``click.ClickException``. Anything else is
a bug and keeps its traceback.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from qfair.errors import QfairError

__all__ = ["user_errors", "one_line", "reported"]


def user_errors(*extra: type[BaseException]) -> tuple[type[BaseException], ...]:
    """The exception types whose message is a one-line answer for the user:
    every qfair error (:class:`QfairError`) and ``extra``."""
    return (QfairError, *extra)


def one_line(e: BaseException) -> str:
    text = str(e)
    return text.splitlines()[0] if text else type(e).__name__


@contextmanager
def reported(path: object, *extra: type[BaseException], interrupted: str | None = None) -> Iterator[None]:
    """Run a command's work: user errors (the library's and ``extra``) become one
    line; an OSError names its file (else ``path``); Ctrl-C prints ``interrupted``
    when given (what is left on disk and how to finish it)."""
    errors = user_errors(*extra)
    try:
        yield
    except errors as e:
        raise click.ClickException(one_line(e)) from None
    except OSError as e:
        raise click.ClickException(f"{getattr(e, 'filename', None) or path}: {e.strerror or e}") from None
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        raise click.ClickException(interrupted) from None
