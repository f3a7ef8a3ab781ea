"""The repository documents itself: no file points at documents outside it,
and every relative link in the docs resolves."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.splitlines() if line and (ROOT / line).is_file()]


def test_no_file_refers_to_documents_outside_the_repository():
    outside = re.compile(r"\b(DESIGN|METRICS)\.md\b|shared/")
    bad = []
    for p in _tracked_files():
        if p.suffix in (".npy", ".parquet", ".xz", ".gz", ".kld", ".png") or p.name == Path(__file__).name:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if outside.search(line):
                bad.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not bad, "\n".join(bad)


def test_relative_links_in_docs_resolve():
    link = re.compile(r"\]\(([^)#:\s]+)(#[^)]*)?\)")
    bad = []
    for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target, _ in link.findall(p.read_text(encoding="utf-8")):
            if not (p.parent / target).exists():
                bad.append(f"{p.relative_to(ROOT)} -> {target}")
    assert not bad, "\n".join(bad)


def test_one_version_source():
    import importlib.metadata

    import qfair

    assert importlib.metadata.version("qfair") == qfair.__version__
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in text and "\nversion =" not in text
