"""Importers: results of other tools turned into qfair dumps, so that ``qfair
analyze`` compares them like its own.

- :mod:`qfair.importers.llamacpp`: a ``llama-perplexity --kl-divergence-base``
  file -> a ``text`` dump;
- :mod:`qfair.importers.lm_eval`: lm-evaluation-harness ``--log_samples``
  logs of multiple-choice tasks -> a ``choices_only`` dump.

Every importer writes through :class:`qfair.dump.DumpWriter` and refuses bad
input with a :class:`qfair.dump.DumpError` whose one-line message names the
file and the problem (the CLI prints it and exits with status 1).
"""
from __future__ import annotations

__all__ = ["import_llamacpp", "import_lm_eval"]


def import_llamacpp(*args, **kwargs):
    from qfair.importers.llamacpp import import_llamacpp as f

    return f(*args, **kwargs)


def import_lm_eval(*args, **kwargs):
    from qfair.importers.lm_eval import import_lm_eval as f

    return f(*args, **kwargs)
