"""docs/cli.md is exactly what scripts/gen_cli_docs.py renders from the CLI's --help."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    want = gen.render()
    got = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert got == want, "docs/cli.md is stale: run python scripts/gen_cli_docs.py"
