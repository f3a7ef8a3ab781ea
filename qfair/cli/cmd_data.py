"""`qfair data fetch`: the benchmarks' full splits from the hub into a directory `--data-dir` reads offline."""
from __future__ import annotations

import click

from qfair.cli import main
from qfair.cli.errors import reported


@main.group("data")
def data_group() -> None:
    """Benchmark data for machines without hub access."""


@data_group.command("fetch")
@click.argument("tasks", nargs=-1, required=True, metavar="TASK...")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Directory to write (created; an earlier fetch's files and manifest entries are kept).")
def fetch_cmd(tasks, out) -> None:
    """Write each TASK's full evaluation split from the Hugging Face hub into
    --out as a JSON Lines file in the dataset's own field names (the schema
    --data-file reads), plus qfair-data.json: each file's source (dataset,
    config, split, revision) and sha256. Tasks and groups as --tasks takes
    them. Needs the hub and the 'datasets' package (pip install 'qfair[data]').

    Then `--data-dir DIR` (qfair dump, sensitivity, tasks; `data_dir` in a study
    file) reads every task the directory holds from its file, offline, after
    checking its sha256.

    \b
    Examples:
      qfair data fetch truthfulqa piqa boolq openbookqa ai2_arc hellaswag --out data/qfair
      qfair data fetch xstorycloze crows_pairs bbq stereoset winogender --out data/qfair
      qfair dump --tasks piqa,arc_easy --data-dir data/qfair --out runs/base
    """
    from qfair.tasks.fetch import fetch

    with reported(out):
        res = fetch(list(tasks), out, log=lambda m: click.echo(m, err=True))
    click.echo(res.text())
