"""`qfair demo`: the whole study on the embedded default model, offline."""
from __future__ import annotations

import click

from qfair.cli import main
from qfair.cli.errors import reported


@main.command("demo")
@click.option("--out", "out", default="qfair-demo", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the dumps, the analysis tables and the report.")
@click.option("--quant", default="bnb-int8,bnb-nf4", show_default=True, metavar="SPEC[,SPEC...]",
              help="Quantized variants to compare with the base (see `qfair quant-specs`); "
                   "one whose backend is missing here is skipped.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="Examples per task (0: every built-in example).")
@click.option("--tasks", default=None, metavar="A,B,C",
              help="Tasks with built-in samples. Default: piqa, boolq, openbookqa, arc_easy, hellaswag, "
                   "truthfulqa_mc2, xstorycloze_en, crows_pairs_english.")
@click.option("--model", default=None, metavar="DIR",
              help="A local model directory instead of the embedded SmolLM2-135M-Instruct.")
@click.option("--bootstrap", type=click.IntRange(min=1), default=10000, show_default=True,
              help="Paired bootstrap resamples per test.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the dumps and the bootstrap.")
@click.option("--threads", type=click.IntRange(min=1, max=4096), default=None,
              help="Compute threads of the dumps and the analysis (default: QFAIR_THREADS, else OMP_NUM_THREADS, else the CPUs this process may use).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--generation/--no-generation", default=True, show_default=True,
              help="Also run the short generation part (4 prompts, 32 new tokens, teacher-forced comparison).")
def demo_cmd(out, quant, limit, tasks, model, bootstrap, seed, threads, no_progress, generation) -> None:
    """Run the whole study offline on the embedded SmolLM2-135M-Instruct: dump it in
    full precision and quantized (bnb-int8, bnb-nf4) on the built-in samples of seven
    benchmarks and CrowS-Pairs, compare each quantized dump with the base, print the
    summary and write an HTML report.

    \b
    Example:
      qfair demo --out qfair-demo          # then open qfair-demo/report/report.html
      qfair demo --quant bnb-nf4 --limit 5
    """
    from qfair.demo import DEMO_TASKS, DemoError, run_demo
    from qfair.report import ReportError

    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else list(DEMO_TASKS)
    with reported(out, DemoError, ReportError):
        r = run_demo(out, model=model, quant=quant, tasks=names, limit=limit, bootstrap=bootstrap, seed=seed,
                     progress=not no_progress, log=lambda m: click.echo(m, err=True), threads=threads,
                     generation=generation)
    click.echo("")
    click.echo(r.summary_text, nl=False)
    click.echo("")
    import textwrap

    for h in r.headlines:
        click.echo(textwrap.fill(h, width=100, subsequent_indent="  "))
    if r.gen_lines:
        click.echo("")
        for h in r.gen_lines:
            click.echo(textwrap.fill(h, width=100, subsequent_indent="  "))
    for s, why in r.skipped.items():
        click.echo(f"skipped {s}: {why}")
    from qfair.analyze.notes import collapse_notes

    for n in collapse_notes(r.notes):
        click.echo(f"note: {n}", err=True)
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in r.seconds.items() if k != "total")
    click.echo(f"took {r.seconds.get('total', 0):.0f} s ({steps})")
    if r.gen_report is not None:
        click.echo(f"generation report: {r.gen_report.resolve()}")
    click.echo(f"tables: {r.analysis}")
    click.echo(f"report: {r.report.resolve()}")
