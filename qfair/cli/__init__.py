"""The `qfair` command line: parsing and printing only; the work lives in the library.

Each sub-command lives in its own module here and imports heavy libraries
(torch, transformers, matplotlib) inside its function body, so that
`qfair --help` stays instant.
"""
from __future__ import annotations

import click

from qfair import __version__


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    try:  # the compiled core is small and loads fast; `qfair --help` does not load it
        from qfair._native import core

        kernels = f" (C++ core: {core.active_isa()} kernels; this CPU runs {', '.join(core.available_isas())})"
    except ImportError as exc:  # pragma: no cover - broken install
        kernels = f" (C++ core not loadable: {exc})"
    click.echo(f"qfair, version {__version__}{kernels}")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and the vector kernels the core runs with, and exit.")
def main() -> None:
    """Measure what quantization does to a language model's confidence and
    vocabulary-wide output distributions, and who bears the cost.

    \b
    Typical study:
      qfair dump --quant none     --out runs/base
      qfair dump --quant bnb-nf4  --out runs/nf4
      qfair analyze runs/base runs/nf4 --out runs/analysis
      qfair report runs/analysis
    or all of it on the embedded default model: qfair demo
    """


def _register() -> None:
    # Sub-command modules register themselves on `main`; a module that is not
    # written yet is simply absent.
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{info.name}")


_register()
