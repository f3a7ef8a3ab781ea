"""Write docs/cli.md from the `qfair` command's own --help texts.

    python scripts/gen_cli_docs.py          # rewrite docs/cli.md
    python scripts/gen_cli_docs.py --check  # exit 1 when docs/cli.md is stale

tests/test_cli_docs.py runs the check, so the page never drifts from the CLI.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

OUT = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _commands(group: click.Group, ctx: click.Context, prefix: list[str]):
    for name in sorted(group.list_commands(ctx)):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        yield [*prefix, name], cmd
        if isinstance(cmd, click.Group):
            sub = click.Context(cmd, info_name=name, parent=ctx)
            yield from _commands(cmd, sub, [*prefix, name])


def render() -> str:
    from qfair.cli import main

    width = 100
    opts = {"terminal_width": width, "max_content_width": width, "help_option_names": ["-h", "--help"]}
    root = click.Context(main, info_name="qfair", **opts)
    parts = ["# Command-line reference\n",
             "Generated from the commands' own `--help` by `scripts/gen_cli_docs.py`; "
             "a test fails when this page is stale.\n",
             "## qfair\n", "```", main.get_help(root).rstrip(), "```\n"]
    for path, cmd in _commands(main, root, []):
        ctx = click.Context(cmd, info_name=" ".join(["qfair", *path]), parent=None, **opts)
        parts += [f"## qfair {' '.join(path)}\n", "```", cmd.get_help(ctx).rstrip(), "```\n"]
    return "\n".join(parts)


def main() -> int:
    text = render()
    if sys.argv[1:] == ["--check"]:
        if not OUT.is_file() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is stale: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
