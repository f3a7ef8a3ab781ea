"""`qfair doctor`: what the C++ core runs with here (instruction set, threads)
and a quick measured throughput."""
from __future__ import annotations

import click

from qfair.cli import main


@main.command("doctor")
@click.option("--threads", type=click.IntRange(min=0), default=None,
              help="Threads for the measurements (default: QFAIR_THREADS, else OMP_NUM_THREADS, else the CPUs this process may use).")
@click.option("--isa", type=click.Choice(["avx512", "avx2", "baseline"]), default=None,
              help="Cap the instruction set (as QFAIR_ISA does) to compare the kernels.")
@click.option("--seconds", type=click.FloatRange(min=0.0), default=0.3, show_default=True,
              help="Time spent on each measurement.")
@click.option("--no-measure", is_flag=True, help="Only report the configuration.")
def doctor_command(threads: int | None, isa: str | None, seconds: float, no_measure: bool) -> None:
    """Report the vector instruction set the core chose (and the ones this
    CPU runs), its threads, and a quick measured divergence throughput on
    float16 rows and paired-bootstrap rate. Timings are medians of a few
    short runs: on a busy machine they are lower."""
    from qfair._native import core
    from qfair.doctor import doctor

    if isa is not None:
        core.select_isa(isa)
    r = doctor(seconds=seconds, threads=threads, measure=not no_measure)
    click.echo(f"qfair {r.version}")
    click.echo(f"ISA: {r.isa} (available: {', '.join(r.isas)}; QFAIR_ISA=avx2|baseline caps it)")
    click.echo(f"threads: {r.threads} (CPUs available to this process: {r.cpus})")
    if r.divergence is not None:
        d = r.divergence
        click.echo(f"divergence: {d.rate / 1e9:.2f} G pairs/s (float16 rows of a {r.vocab:,}-token vocabulary, "
                   f"full suite, {r.threads} thread{'s' if r.threads != 1 else ''}, median of {d.runs} runs)")
    if r.bootstrap is not None:
        b = r.bootstrap
        click.echo(f"bootstrap: {b.rate:,.0f} paired resamples/s of {r.bootstrap_examples:,} examples "
                   f"(accuracy + ECE difference, BCa; {b.rate * r.bootstrap_examples / 1e9:.2f} G example-draws/s, "
                   f"median of {b.runs} runs)")
