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
@click.option("--stream-mib", type=click.IntRange(min=0), default=None,
              help="MiB of float16 rows (both arrays) for the streamed-from-memory measurement "
                   "(default: 1024, or 4x the last-level cache if larger; 0 skips it).")
@click.option("--no-measure", is_flag=True, help="Only report the configuration.")
def doctor_command(threads: int | None, isa: str | None, seconds: float, stream_mib: int | None,
                   no_measure: bool) -> None:
    """Report the vector instruction set the core chose (and the ones this
    CPU runs), its threads, and quick measured divergence throughputs on
    float16 rows -- rows that stay in the cache, and rows streamed from memory
    with the pure-read ceiling of the same bytes (what a large dump sees) --
    and the paired-bootstrap rate. Timings are medians of a few short runs: on
    a busy machine they are lower."""
    from qfair._native import core
    from qfair.doctor import doctor

    if isa is not None:
        core.select_isa(isa)
    r = doctor(seconds=seconds, threads=threads, measure=not no_measure,
               stream_bytes=None if stream_mib is None else stream_mib << 20)
    click.echo(f"qfair {r.version}")
    click.echo(f"ISA: {r.isa} (available: {', '.join(r.isas)}; QFAIR_ISA=avx2|baseline caps it)")
    click.echo(f"threads: {r.threads} (CPUs available to this process: {r.cpus})")
    if r.divergence is not None:
        d = r.divergence
        cache = f"the {r.cache_bytes / 2**20:,.0f} MiB last-level cache" if r.cache_bytes else "the cache"
        click.echo(f"divergence: {d.rate / 1e9:.2f} G pairs/s on rows that stay in cache "
                   f"({r.cached_bytes / 2**20:.0f} MiB of float16 rows of a {r.vocab:,}-token vocabulary, "
                   f"full suite, {r.threads} thread{'s' if r.threads != 1 else ''}, median of {d.runs} runs)")
        if r.streamed is not None and r.read_ceiling is not None:
            s, c = r.streamed, r.read_ceiling
            click.echo(f"divergence streamed: {s.rate / 1e9:.2f} G pairs/s on {r.stream_bytes / 2**20:,.0f} MiB of rows "
                       f"streamed from memory (larger than {cache}; median of {s.runs} run{'s' if s.runs != 1 else ''}); "
                       f"a pure read of them: {c.rate / 1e9:.2f} G pairs/s, the kernel reaches {s.rate / c.rate:.0%}")
        click.echo(f"a large dump sees: the {r.large_dump_sees} figure"
                   + (" (its rows do not fit in the cache)" if r.large_dump_sees == "streamed"
                      else " (not measured streamed: --stream-mib 0; a large dump may see less)"))
    if r.bootstrap is not None:
        b = r.bootstrap
        click.echo(f"bootstrap: {b.rate:,.0f} paired resamples/s of {r.bootstrap_examples:,} examples "
                   f"(accuracy + ECE difference, BCa; {b.rate * r.bootstrap_examples / 1e9:.2f} G example-draws/s, "
                   f"median of {b.runs} runs)")
