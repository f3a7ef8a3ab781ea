"""qfair/_core.pyi matches the compiled module: the same functions, and for each
the same parameter names, order and default values (read from the signature
line pybind11 writes into every docstring)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

core = pytest.importorskip("qfair._core")

PYI = Path(__file__).resolve().parents[1] / "qfair" / "_core.pyi"


def _split_top(s: str) -> list[str]:
    """Split on commas outside brackets and quotes."""
    out, depth, cur, quote = [], 0, "", None
    for ch in s:
        if quote:
            cur += ch
            quote = None if ch == quote else quote
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def _literal(text: str):
    try:
        v = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return list(v) if isinstance(v, tuple) else v


def compiled_signatures() -> dict[str, list[tuple[str, object]]]:
    sigs = {}
    for name in dir(core):
        fn = getattr(core, name)
        if name.startswith("_") or not callable(fn) or not fn.__doc__:
            continue
        line = fn.__doc__.splitlines()[0]
        assert line.startswith(name + "("), f"{name}: no pybind11 signature line in its docstring"
        inner = line[len(name) + 1:line.rindex(") ->")]
        params = []
        for part in _split_top(inner):
            pname, _, rest = part.partition(":")
            default = rest.split("=", 1)[1].strip() if "=" in rest else None
            params.append((pname.strip(), None if default is None else _literal(default)))
        sigs[name] = params
    return sigs


def stub_signatures() -> dict[str, list[tuple[str, object]]]:
    tree = ast.parse(PYI.read_text(encoding="utf-8"))
    sigs = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            args = node.args.args
            defaults = [None] * (len(args) - len(node.args.defaults)) + \
                       [_literal(ast.unparse(d)) for d in node.args.defaults]
            sigs[node.name] = [(a.arg, d) for a, d in zip(args, defaults)]
    return sigs


def test_stub_lists_exactly_the_compiled_functions():
    assert sorted(stub_signatures()) == sorted(compiled_signatures())


@pytest.mark.parametrize("name", sorted(compiled_signatures()))
def test_stub_signature_matches(name):
    want = compiled_signatures()[name]
    got = stub_signatures().get(name)
    assert got is not None, f"{name} missing from _core.pyi"
    assert [p for p, _ in got] == [p for p, _ in want], f"{name}: parameter names/order differ"
    for (p, dg), (_, dw) in zip(got, want):
        if dw is None:
            assert dg is None, f"{name}({p}): the stub has a default the module does not"
        elif not isinstance(dw, str):  # a literal the module prints (numbers, strings, lists, booleans)
            assert dg == dw, f"{name}({p}): default {dg!r} in the stub, {dw!r} in the module"
        else:
            assert dg is not None, f"{name}({p}): the module has a default the stub lacks"
