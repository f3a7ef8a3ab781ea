"""`qfair analyze`: compare a base dump with quantized dumps and write the tables."""
from __future__ import annotations

import click

from qfair.cli import main
from qfair.cli.errors import reported


def _int_list(ctx, param, value):  # noqa: ARG001 - click callback signature
    try:
        ks = tuple(int(x) for x in str(value).split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 1,5,10, got {value!r}") from None
    if not ks or any(not 1 <= k <= 1000 for k in ks):
        raise click.BadParameter(f"expected integers in 1..1000, got {value!r}")
    return ks


def _formats(ctx, param, value):  # noqa: ARG001
    from qfair.analyze.tables import FORMATS

    fs = tuple(x.strip() for x in str(value).split(",") if x.strip())
    bad = [f for f in fs if f not in FORMATS]
    if bad or not fs:
        raise click.BadParameter(f"unknown format(s) {bad}; choose from {', '.join(FORMATS)}")
    return fs


def _bins(ctx, param, value):  # noqa: ARG001
    from qfair.analyze.summary import parse_bins

    try:
        parse_bins(str(value))
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return str(value)


@main.command("analyze")
@click.argument("base", type=click.Path(exists=True, file_okay=False))
@click.argument("quant", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Directory for the tables.")
@click.option("--bootstrap", "bootstrap", type=click.IntRange(min=1), default=10000, show_default=True,
              help="Paired bootstrap resamples per test.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap / permutation seed.")
@click.option("--bins", default="15", show_default=True, callback=_bins, metavar="K[,METRIC=K...]",
              help="Calibration bins: one number for qfair's estimators, and METRIC=K per metric (ece, ece_mass, "
                   "mce, rms_ce, l2_ce_debiased, reliability; the study's ace_study [15 ranges], "
                   "ace_study_binary [100], mce_study [100]).")
@click.option("--binning", type=click.Choice(["width", "mass"]), default="width", show_default=True,
              help="Binning of MCE, RMS-CE and the debiased L2 (ECE is reported under both).")
@click.option("--topk", default="1,5,10", show_default=True, callback=_int_list, help="Top-k overlaps.")
@click.option("--strata", type=click.Choice(["confidence", "entropy"]), default="confidence", show_default=True,
              help="Stratify examples by the base model's confidence or choice entropy.")
@click.option("--n-strata", type=click.IntRange(min=1), default=5, show_default=True, help="Number of strata.")
@click.option("--format", "formats", default="parquet,csv,md,latex", show_default=True, callback=_formats,
              help="Output formats (latex: summary only).")
@click.option("--ttest", is_flag=True, help="Add the paired t-test (column p_ttest) to the mean-difference rows.")
@click.option("--entropy-unit", type=click.Choice(["nats", "bits"]), default="nats", show_default=True,
              help="Unit of the choice entropy in the summary (the study uses bits).")
@click.option("--no-uncertainty", is_flag=True,
              help="Leave out the uncertainty tests (rank correlations of base uncertainty and shift).")
@click.option("--threads", type=click.IntRange(min=1, max=4096), default=None,
              help="Threads (default: QFAIR_THREADS, else OMP_NUM_THREADS, else the CPUs this process may use).")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=None,
              help="Logits rows per streamed chunk (default: 128 MiB of stored rows of both dumps, e.g. 682 rows "
                   "of a 49,152-token float16 vocabulary; the next chunk is read while one is computed, so two "
                   "chunks are held); bounds memory.")
@click.option("--skip-hash", is_flag=True,
              help="Check the dumps' file sizes and shard headers but not their digests (xxh3-128 for "
                   "logits shards, sha256 for tables); recorded in settings.json.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--profile", is_flag=True,
              help="Print where the time went, stage by stage (reading + kernel, file digests on their second thread, "
                   "bootstrap, uncertainty tests, calibration, Polars, writing), to standard error.")
@click.option("--lexicon", "lexicons", multiple=True, metavar="NAME=FILE",
              help="Generation dumps: a word list whose rate is measured in the texts (gendered / negative replace "
                   "the built-in lists, other names add one; plain text or a CSV/TSV with a lemma column).")
@click.option("--print", "show", type=click.Choice(["headline", "rows"]), default="headline", show_default=True,
              help="What to print: the per-task headline table (each task's own metric, the reading, KL and "
                   "flips) or the summary's raw rows (the first 60).")
@click.option("--scorer", default=None, metavar="hf:PATH_OR_ID",
              help="Generation dumps: a local Hugging Face text-classification model run on every text; "
                   "each label's rate is compared.")
def analyze_cmd(base, quant, out, bootstrap, seed, bins, binning, topk, strata, n_strata, formats, ttest,
                entropy_unit, no_uncertainty, threads, chunk_rows, skip_hash, no_progress, profile, lexicons, show,
                scorer) -> None:
    """Compare BASE with one or more QUANT dumps: token divergences, example-level
    accuracy / confidence / calibration changes, flips, strata and groups, each
    difference with its bootstrap CI and p-value (Holm over the primary family:
    each task's first headline metric; BH within each metric class for the rest).
    Prints the per-task headline table (--print rows: the summary's raw rows).

    \b
    Example:
      qfair analyze runs/base runs/nf4 runs/int8 --out runs/analysis
    """
    from qfair.analyze import compare
    from qfair.analyze.notes import collapse_notes
    from qfair.analyze.outdir import lock_analysis_dir
    from qfair.analyze.tables import format_summary
    from qfair.report.text import compact_summary, headline_rows
    from qfair.stages import profiling, stage

    with reported(out, ValueError), profiling() as timer:  # the library checks options as ValueError too
        kind_options = _generation_options(lexicons, scorer)
        inputs = {"BASE": base, **{f"QUANT {q}": q for q in quant}}
        lock = lock_analysis_dir(out, inputs)  # a second analysis into --out stops here, before any work
        try:
            result = compare(base, list(quant), bootstrap=bootstrap, seed=seed, bins=bins, binning=binning,
                             topk=topk, strata=strata, n_strata=n_strata, threads=threads, ttest=ttest,
                             entropy_unit=entropy_unit, uncertainty=not no_uncertainty,
                             chunk_rows=chunk_rows, progress=not no_progress, verify_hash=not skip_hash,
                             kind_options=kind_options)
            with stage("write tables"):
                files = result.write(out, formats=formats)
        finally:
            lock.release()
    if profile:
        click.echo("time by stage (exclusive wall seconds; the hash thread runs beside the others):\n"
                   + timer.format(), err=True)
    models = list(result.settings.get("models") or [])
    if show == "rows":
        click.echo(format_summary(result.summary, max_rows=60), nl=False)
    elif headline_rows(result.summary, models):
        click.echo(compact_summary(result.summary, models), nl=False)
    else:
        click.echo(f"(no task headline metrics in this analysis; --print rows shows the summary's "
                   f"{result.summary.height} rows)")
    if "text_summary" in result.extra:  # text dumps: llama-perplexity --kl-divergence's own layout
        from qfair.analyze.text import format_llamacpp

        for label in result.settings["models"]:
            lines = format_llamacpp(result.extra["text_summary"], result.extra["text_chunks"], label)
            if lines:
                click.echo(f"\nllama.cpp --kl-divergence summary, {label} vs base:\n" + "\n".join(lines))
    for n in collapse_notes(result.notes):
        click.echo(f"note: {n}", err=True)
    click.echo(f"wrote {len(files)} files to {out} (tables: {', '.join(result.table_names())}; provenance.json; "
               "summary: Holm over the primary rows, BH within each metric class of the secondary rows, "
               "column family)")


def _generation_options(lexicons, scorer) -> dict | None:
    """The generation analysis' options (None when none is given)."""
    if not lexicons and not scorer:
        return None
    from qfair.generation.lexicon import lexicons_from_options
    from qfair.generation.scorer import parse_scorer

    out: dict = {"lexicons": lexicons_from_options(lexicons)}
    if scorer:
        out["scorer"] = parse_scorer(scorer)
    return out
