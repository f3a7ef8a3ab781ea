"""`qfair report`: figures and a self-contained HTML page from an analysis directory."""
from __future__ import annotations

import click

from qfair.cli import main


@main.command("report")
@click.argument("analysis_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", default=None, type=click.Path(file_okay=False),
              help="Directory for report.html and the PNGs (default: ANALYSIS_DIR/report).")
@click.option("--title", default=None, help="Title of the HTML page.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def report_cmd(analysis_dir, out, title, no_progress) -> None:
    """Draw the figures of ANALYSIS_DIR (written by `qfair analyze`) and write a
    self-contained report.html (images embedded, opens offline) beside the PNGs:
    reliability diagrams, token KL distribution, uncertainty strata, accuracy and
    flips, per-group differences, the summary table and the run's provenance.
    On a directory written by `qfair sensitivity`, the report shows its units x
    metrics heatmap, the top units per metric and any recommendation.

    \b
    Example:
      qfair report runs/analysis            # -> runs/analysis/report/report.html
    """
    from qfair.report import ReportError, build_report

    try:
        r = build_report(analysis_dir, out, title=title, progress=not no_progress)
    except ReportError as e:
        raise click.ClickException(str(e)) from None
    for n in r.notes:
        click.echo(f"note: {n}", err=True)
    click.echo(f"wrote {len(r.figures)} figures to {r.out}")
    click.echo(f"report: {r.html.resolve()}")
