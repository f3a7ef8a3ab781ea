"""The torch thread count of a command that runs a model in this process."""
from __future__ import annotations

import click

from qfair.threads import resolve_threads

__all__ = ["set_torch_threads"]


def set_torch_threads(threads: int | None) -> int:
    """Set torch's pool to ``--threads``, else ``QFAIR_THREADS``, else
    ``OMP_NUM_THREADS``, else the CPUs this process may use (as ``qfair dump``
    does); a bad variable is a one-line error."""
    import torch

    try:
        n = resolve_threads(threads)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    torch.set_num_threads(n)
    return n
