"""`qfair tasks`: list the built-in tasks, check a data file, render documents."""
from __future__ import annotations

import click

from qfair.cli import main


def _groups_cell(groups: list[str], width: int = 38) -> str:
    if not groups:
        return "-"
    text = ", ".join(groups)
    return text if len(text) <= width else text[: width - 3] + "..."


@main.command("tasks")
@click.option("--show", "show", metavar="TASK",
              help="Render documents of TASK exactly as the model will see them.")
@click.option("-n", "--num", "num", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many documents --show renders.")
@click.option("--data-file", "data_files", multiple=True, metavar="TASK=PATH",
              help="Read TASK from a local JSONL/Parquet/CSV file in the dataset's own field "
                   "names (repeatable); the file is checked row by row. PATH 'hf' reads the "
                   "task's Hugging Face dataset (needs the 'datasets' package).")
@click.option("--data-dir", "data_dir", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Read every task DIR holds from there (written by qfair data fetch; sha256-checked); "
                   "--data-file wins for its task.")
@click.option("--tasks", "tasks", metavar="A,B,C",
              help="Only these tasks (group names such as xstorycloze expand).")
def tasks_command(show: str | None, num: int, data_files: tuple[str, ...], data_dir: str | None,
                  tasks: str | None) -> None:
    """List the tasks with their prompt format, data source and groups, or
    render one task's documents (--show)."""
    import qfair.tasks as T
    from qfair.tasks.datadir import DataDir

    try:
        files = T.parse_data_files(data_files)
        held = set(DataDir.read(data_dir).tasks) if data_dir is not None else set()
        if show is not None:
            _show(T, show, files.get(show), num, data_dir)
            return
        selected = T.resolve(tasks) if tasks else T.names()
        rows = [_row(T, name, files.get(name), data_dir if name in held else None) for name in selected]
    except T.TaskError as exc:
        raise click.ClickException(str(exc)) from None

    header = ("TASK", "KIND", "PROMPT FORMAT", "ITEMS", "SOURCE", "GROUPS")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header) - 1)]
    for r in [header] + rows:
        cells = [str(c).ljust(w) for c, w in zip(r[:-1], widths)]
        click.echo("  ".join(cells + [str(r[-1])]).rstrip())


def _row(T, name: str, data_file, data_dir) -> tuple:
    sp = T.spec(name)
    if data_file is not None or data_dir is not None:
        task = T.get(name, data_file=data_file, data_dir=data_dir)   # validates every row
        return (name, sp.kind, sp.prompt_format_version, len(task), task.source,
                _groups_cell(task.groups()))
    if sp.sample is None:
        return (name, sp.kind, sp.prompt_format_version, 0,
                "(none: --data-file or hf)", f"({sp.group_by})" if sp.group_by else "-")
    task = T.get(name)
    return (name, sp.kind, sp.prompt_format_version, len(task), task.source,
            _groups_cell(task.groups()))


def _show(T, name: str, data_file, num: int, data_dir) -> None:
    if name in T.GROUPS:
        raise T.TaskError(f"--show needs a single task, not the group '{name}' "
                          f"(members: {', '.join(T.GROUPS[name])})")
    task = T.get(name, data_file=data_file, limit=num, data_dir=data_dir)
    click.echo(f"task:            {task.name}  ({task.kind})")
    click.echo(f"prompt format:   {task.prompt_format_version}")
    click.echo(f"source:          {task.source}  sha256 {task.source_hash[:16]}")
    click.echo(f"documents:       {task.n_source_docs}")
    click.echo(f"target delimiter: {task.target_delimiter!r}")
    for doc in task.docs():
        click.echo("")
        click.echo(f"--- doc {doc.doc_index}  {doc.example_id}"
                   + (f"  group={doc.group}" if doc.group is not None else ""))
        if task.kind == "generation":
            click.echo("prompt (the model writes its continuation):")
            click.echo(doc.context)
            click.echo(f"extras: {dict(doc.extras)}" if doc.extras else "")
            continue
        click.echo("context:")
        click.echo(doc.context if doc.context else "(empty: the scorer starts from BOS/EOS)")
        click.echo("continuations (target delimiter + choice):")
        for i, choice in enumerate(doc.choices):
            if doc.labels is not None and task.kind == "bbq":    # bit flags: correct, biased, unknown
                code = doc.labels[i]
                mark = f"{'gold' if code & 1 else '':<5}{'biased' if code & 2 else '':<6}"
            elif doc.labels is not None:
                mark = "true " if doc.labels[i] else "false"
            else:
                mark = "gold " if i == doc.gold else "     "
            click.echo(f"  [{i}] {mark} {task.target_delimiter + choice!r}")
        extras = {k: v for k, v in doc.extras.items()}
        if extras:
            click.echo(f"extras: {extras}")
