"""The `qfair` command line: parsing and printing only; the work lives in the library.

Each sub-command lives in its own module here and imports heavy libraries
(torch, transformers, matplotlib) inside its function body, so that
`qfair --help` stays instant.
"""
from __future__ import annotations

import click

from qfair import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="qfair")
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
