"""Pruning: weight masks (magnitude, N:M, Wanda), whole-block removal, and
measuring the sparsity a model actually has.

Pure torch; knows nothing of specs, caches or loading (the ``prune-*`` specs
are a backend in :mod:`qfair.models.backends.pruning`). One concept per module:

- :mod:`~qfair.pruning.masks`: which weights to zero given a score (per layer,
  per output row, or N:M groups along the input);
- :mod:`~qfair.pruning.wanda`: the Wanda score |W_ij|·‖X_j‖₂ and the capture of
  the input norms ‖X_j‖₂ from calibration text;
- :mod:`~qfair.pruning.sparsegpt`: SparseGPT's mask and weight update from the
  calibration Hessian;
- :mod:`~qfair.pruning.forward`: the hooked calibration pass both gather their inputs with;
- :mod:`~qfair.pruning.targets`: which linear layers are pruned (``ignore=``);
- :mod:`~qfair.pruning.weights`: pruning the selected layers with a method;
- :mod:`~qfair.pruning.layers`: removing whole decoder blocks;
- :mod:`~qfair.pruning.sparsity`: counting the zeros of the weights a model uses.
"""
from __future__ import annotations

from qfair.errors import QfairError


class PruningError(QfairError):
    """A pruning request that cannot be honoured (one line naming what and why)."""


__all__ = ["PruningError"]
