"""`qfair study`: a grid of models x quantization specs x tasks in one command."""
from __future__ import annotations

import click

from qfair.cli import main
from qfair.cli.errors import reported


@main.command("study")
@click.argument("study_file", type=click.Path(dir_okay=False, exists=True), metavar="STUDY.toml")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False),
              help="Output directory (default: the study file's `out`).")
@click.option("--executor", type=click.Choice(["local", "slurm", "submitit-local"]), default="local",
              show_default=True,
              help="local: every job in this process, one after the other; slurm: one cluster job per dump "
                   "(job arrays through submitit; GPUs, time limit and partition from the study file's [slurm]), "
                   "then the analyses; submitit-local: the same jobs as processes on this machine.")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (dumps to write, resume or skip; expected rows and disk; analyses) and stop. "
                   "Reads tokenizers, never model weights.")
@click.option("--verify", is_flag=True,
              help="Skip a complete dump only when every file it lists has its recorded digest (reads every "
                   "byte); without it, a complete dump's files must be present with their recorded sizes.")
def study_cmd(study_file, out, executor, dry_run, verify) -> None:
    """Run a study: every model x quantization spec x task group of STUDY.toml
    is dumped (complete dumps skipped, interrupted ones resumed), every (base,
    quantized) pair of a model is analysed with its own report, and the results
    are aggregated across models: results.parquet / .csv (every summary metric
    with its interval, the measured bits per weight and model bytes), figures
    of each headline metric against model size and against bits per weight,
    and report.html linking every pair's report. docs/study.md describes the
    study file.

    \b
    Examples:
      qfair study study.toml --out runs/study --dry-run
      qfair study study.toml --out runs/study
      qfair study study.toml --out /scratch/runs/study --executor slurm
    """
    from qfair.study import StudyError, run_study

    with reported(out or study_file, StudyError):
        res = run_study(study_file, out, executor=executor, dry_run=dry_run, verify=verify, log=click.echo)
    if res.failed:
        for k, why in res.failed.items():
            click.echo(f"FAILED {k}: {why}", err=True)
        raise click.ClickException(f"{len(res.failed)} job(s) failed; the others are in {res.plan.out} "
                                   "(run the same command again to retry them)")
