"""Every error qfair shows its user derives from one base, qfair.errors.QfairError,
and the command line turns any of them into one line and exit status 1."""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil

import click
import pytest
from click.testing import CliRunner

import qfair
from qfair.cli.errors import reported
from qfair.errors import QfairError

# Exceptions that never reach the user: the task loader catches the first two and raises a
# TaskDataError naming task, file and line instead (qfair/tasks/registry.py); the capture
# catches its own stop signal.
INTERNAL_SIGNALS = {
    "qfair.tasks.base.FieldError": "a row converter's complaint; the loader adds task, file and line",
    "qfair.tasks.loading.RowError": "an unreadable row; the loader adds task and file",
    "qfair.compress.capture._Stop": "ends a capture forward at the block being calibrated; caught by the capture",
}


def _qfair_modules() -> list[str]:
    names = [qfair.__name__]
    for info in pkgutil.walk_packages(qfair.__path__, prefix="qfair."):
        if info.name != "qfair.__main__":  # importing it runs the command line
            names.append(info.name)
    return sorted(names)


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined (not merely imported) in a qfair module."""
    found: dict[str, type[BaseException]] = {}
    for name in _qfair_modules():
        try:
            module = importlib.import_module(name)
        except ImportError as e:  # an optional backend's library is missing: its module cannot be read
            if name.startswith("qfair.") and getattr(e, "name", "") and not e.name.startswith("qfair"):
                continue
            raise
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{name}.{obj.__qualname__}"] = obj
    return found


def test_qfair_error_is_a_value_error_and_imports_nothing_of_qfair():
    assert issubclass(QfairError, ValueError)  # every `except ValueError` keeps working
    tree = ast.parse(inspect.getsource(importlib.import_module("qfair.errors")))
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m == "qfair" or m.startswith("qfair.")], imported


def test_every_error_class_derives_from_qfair_error():
    classes = _exception_classes()
    # the walk found the areas' errors (so a broken walk cannot pass vacuously)
    for expected in ("qfair.errors.DumpError", "qfair.tasks.base.TaskError", "qfair.models.quant.ModelError",
                     "qfair.study.config.StudyError", "qfair.lock.LockError"):
        assert expected in classes
    outside = sorted(name for name, cls in classes.items()
                     if not issubclass(cls, QfairError) and name not in INTERNAL_SIGNALS)
    assert not outside, f"error classes that do not derive from qfair.errors.QfairError: {outside}"
    # the exemptions still exist and are still not user-facing ValueErrors
    for name in INTERNAL_SIGNALS:
        assert name in classes and not issubclass(classes[name], ValueError), name


class _PluginError(QfairError):
    """An error type the CLI has never heard of (a plugin's, say): the base is what counts."""


@pytest.mark.parametrize("error", [QfairError, _PluginError])
def test_cli_turns_any_qfair_error_into_one_line(error, tmp_path):
    written = tmp_path / "kept.txt"

    @click.command()
    def cmd() -> None:
        with reported(tmp_path):
            written.write_text("done before the error\n")
            raise error("--spec: 'q9' is not a known quantization spec\n(a second line the user need not see)")

    r = CliRunner().invoke(cmd, [])
    assert r.exit_code == 1
    assert r.exception is None or isinstance(r.exception, SystemExit)  # no traceback
    lines = r.output.strip().splitlines()
    assert lines == ["Error: --spec: 'q9' is not a known quantization spec"]
    assert written.read_text() == "done before the error\n"  # nothing already written is lost


def test_cli_keeps_the_traceback_of_a_bug(tmp_path):
    @click.command()
    def cmd() -> None:
        with reported(tmp_path):
            raise RuntimeError("a bug")

    r = CliRunner().invoke(cmd, [])
    assert r.exit_code == 1 and isinstance(r.exception, RuntimeError)


def test_a_real_command_reports_a_library_error_in_one_line(tmp_path):
    from qfair.cli import main

    study = tmp_path / "study.toml"
    study.write_text("[study]\nthis is not toml = = \n")
    r = CliRunner().invoke(main, ["study", str(study), "--dry-run"])
    assert r.exit_code == 1, r.output
    assert len(r.output.strip().splitlines()) == 1 and r.output.startswith("Error: "), r.output
