"""`qfair dump`: score multiple-choice tasks (or generate from prompts) with one model and write a dump."""
from __future__ import annotations

import click

from qfair.cli import main
from qfair.cli.errors import reported


def _check_store(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from qfair.dump import DumpError
    from qfair.dump.manifest import parse_store

    try:
        parse_store(value)
    except DumpError as e:
        raise click.BadParameter(str(e).removeprefix("--store is ")) from None
    return value


class _KindOptionsCommand(click.Command):
    """``qfair dump``: its own flags, then every dump kind's options
    (:class:`qfair.dump.kinds.KindOption`), added the first time click asks for
    the parameters, so that a dump kind of a plugin has its flags too."""

    _kinds_added = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self._kinds_added:
            from qfair.dump.kinds import all_kinds
            from qfair.errors import QfairError

            try:
                self.params += [_click_option(o) for k in all_kinds() for o in k.options]
            except QfairError as e:  # a plugin that fails to load: one line
                raise click.ClickException(str(e)) from None
            self._kinds_added = True
        return super().get_params(ctx)


def _click_option(o) -> click.Option:
    """A dump kind's option as a click flag."""
    if o.type == "int":
        typ = click.IntRange(min=None if o.min is None else int(o.min), max=None if o.max is None else int(o.max))
    elif o.type == "float":
        typ = click.FloatRange(min=o.min, max=o.max, min_open=o.min_open)
    elif o.type == "file":
        typ = click.Path(dir_okay=False, exists=True)
    else:
        typ = click.Path(file_okay=False)
    return click.Option([o.flag, o.name], type=typ, default=None, metavar=o.metavar, help=o.help)


@main.command("dump", cls=_KindOptionsCommand)
@click.option("--model", "model", default=None, metavar="M",
              help="Model: a local directory, an HF id already in the local cache, or "
                   "'smollm2-135m' (the embedded default, used when omitted).")
@click.option("--quant", default="none", show_default=True, metavar="SPEC",
              help="Quantization spec, e.g. none, bnb-int8, bnb-nf4:double_quant=true, quanto-int4; 'qfair quant-specs' lists every spec, its options and whether it runs here.")
@click.option("--tasks", default=None, metavar="A,B,C",
              help="Comma-separated tasks or groups. Default: the built-in samples of the seed "
                   "benchmarks plus crows_pairs_english.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Dump directory to write.")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="At most N documents per task.")
@click.option("--data-file", "data_files", multiple=True, metavar="TASK=PATH",
              help="Read TASK's documents from a local JSONL/Parquet/CSV file (repeatable).")
@click.option("--data-dir", "data_dir", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Read every task DIR holds from there, offline, sha256-checked (written by qfair data fetch); "
                   "--data-file wins for its task.")
@click.option("--store", default="full", show_default=True, metavar="full|none|topk:K", callback=_check_store,
              help="full: store every scored token's vocabulary-wide log-probs; none: scalars only; topk:K: per "
                   "row the K largest log-probs, their token ids and the log of the remaining mass.")
@click.option("--store-dtype", type=click.Choice(["f16", "f32", "bf16"]), default="f16", show_default=True,
              help="dtype of the stored log-prob rows.")
@click.option("--shard-rows", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Rows per logits shard (cut at the first example boundary at or past N).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Choice sequences per forward pass (the shared context is computed once); generation tasks: "
                   "continuations decoded together.")
@click.option("--resume", is_flag=True, help="Finish an interrupted dump in --out.")
@click.option("--overwrite", is_flag=True, help="Replace an existing dump in --out.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed recorded in the manifest (torch.manual_seed).")
@click.option("--revision", default=None, help="Model revision (local HF cache).")
@click.option("--dtype", default=None, help="Model dtype (float32, bfloat16, float16, auto).")
@click.option("--device", default=None, help="Device (cpu, cuda, cuda:1, ...).")
@click.option("--device-map", default=None, help="accelerate device map (e.g. auto, cpu): a model larger than one "
              "device is split across the GPUs, the CPU and disk.")
@click.option("--max-memory", default=None, metavar="DEV=SIZE,...",
              help="With --device-map auto: memory each device may take, e.g. 0=20GiB,1=20GiB,cpu=60GiB; what does "
                   "not fit is offloaded to disk.")
@click.option("--offload-folder", default=None, type=click.Path(file_okay=False),
              help="With --device-map: where offloaded weights go (default: a temporary folder removed at exit).")
@click.option("--gguf-file", default=None, help="GGUF file inside --model's directory.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model repository's own code to run.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False), help="Where converted models are cached.")
@click.option("--threads", type=click.IntRange(min=1, max=4096), default=None,
              help="torch compute threads (default: QFAIR_THREADS, else OMP_NUM_THREADS, else the CPUs this process may use; recorded in the manifest).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def dump_cmd(model, quant, tasks, out, limit, data_files, data_dir, store, store_dtype, shard_rows, batch_size,
             resume, overwrite, seed, revision, dtype, device, device_map, max_memory, offload_folder, gguf_file,
             trust_remote_code, cache_dir, threads, no_progress, **kind_options) -> None:
    """Score multiple-choice tasks with one (possibly quantized) model and write a
    dump directory: manifest.json, examples/choices/tokens Parquet tables and
    logits/NNNNN.npy shards of float16 log-probs.

    Generation tasks (gen_stories, gen_bias_probes, gen_prompts) write a
    generation dump instead: each prompt's continuation, and a row per
    generated position.

    \b
    Examples:
      qfair dump --quant bnb-nf4 --tasks piqa,arc_easy --limit 100 --out runs/nf4
      qfair dump --quant bnb-nf4 --text wiki.test.raw --ctx 512 --out runs/nf4-text
      qfair dump --tasks gen_stories --out runs/base-gen
      qfair dump --quant bnb-int8 --tasks gen_stories --reference runs/base-gen --out runs/int8-gen
    """
    from qfair.dump.kinds import KindUsageError, select_kind
    from qfair.dump.run import dump

    load_kwargs = {"revision": revision, "dtype": dtype, "device": device, "device_map": device_map,
                   "max_memory": max_memory, "offload_folder": offload_folder,
                   "gguf_file": gguf_file, "trust_remote_code": trust_remote_code or None,
                   "cache_dir": cache_dir}
    options = {k: v for k, v in kind_options.items() if v is not None}
    try:  # what the flags alone show: an option without the one it needs, or of a kind the others exclude
        select_kind(options, tasks_given=bool(tasks or data_files or data_dir or limit is not None))
    except KindUsageError as e:
        raise click.UsageError(str(e)) from None
    with reported(out, interrupted=f"interrupted; finished shards are kept in {out} (finish with --resume)"):
        summary = dump(out, model=model, quant=quant, tasks=tasks, data_files=list(data_files), data_dir=data_dir,
                       limit=limit,
                       store=store, store_dtype=store_dtype, shard_rows=shard_rows, batch_size=batch_size,
                       resume=resume, overwrite=overwrite, seed=seed, progress=not no_progress,
                       load_kwargs=load_kwargs, threads=threads, options=options)
    import os

    if os.environ.get("RANK", "0") in ("0", ""):  # a data-parallel run reports once, from rank 0
        click.echo(summary.text())
