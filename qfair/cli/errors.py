"""How every command reports a problem the user can fix: one line, exit status 1.

The library raises its own error types (``DumpError``, ``TaskError``,
``ModelError``, ...) with a message that names the file, field or option;
:func:`reported` turns them, and file-system errors, into a one-line
``click.ClickException``. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager

import click

__all__ = ["user_errors", "one_line", "reported"]

# (module, class): the library's user-facing error types; a module whose optional
# dependencies are missing (torch, transformers) simply contributes none
_LIBRARY_ERRORS = (
    ("qfair.fsutil", "PathError"),
    ("qfair.dump", "DumpError"),
    ("qfair.tasks", "TaskError"),
    ("qfair.models", "ModelError"),
)


def user_errors(*extra: type[BaseException]) -> tuple[type[BaseException], ...]:
    """The exception types whose message is a one-line answer for the user."""
    out = list(extra)
    for module, name in _LIBRARY_ERRORS:
        try:
            out.append(getattr(importlib.import_module(module), name))
        except ImportError:  # pragma: no cover - a broken or partial install
            pass
    return tuple(out)


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
