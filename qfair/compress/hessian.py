"""The layer-wise Hessian of the reconstruction objective and its inverse.

For a linear layer with inputs ``x`` (one per token), the objective
``mean_tokens ||(W - What) x||^2`` has Hessian ``H = 2 X X^T / n`` in each row of
``W``. :class:`HessianAccumulator` sums ``X X^T`` batch by batch (each batch's
product in float32, summed in float64) and counts the tokens.

:func:`prepare` readies ``H`` for a layer-wise solver (GPTQ, SparseGPT):
input features that never fired (``H_kk = 0``, dead columns) get ``H_kk = 1``
and their weights are zeroed (they do not affect the output on the data);
then ``dampening * mean(diag H)`` is added to the diagonal. :func:`inverse_cholesky`
returns the upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``), whose
rows hold the error-propagation coefficients of the sequential column solver.
"""
from __future__ import annotations

import torch

from qfair.compress.errors import CompressError


class HessianError(CompressError):
    """A Hessian that cannot be used (no data, not positive definite)."""


class HessianAccumulator:
    """Running ``sum x x^T`` (float64) and token count for one layer input."""

    def __init__(self, dim: int):
        self.dim = dim
        self.sum = torch.zeros(dim, dim, dtype=torch.float64)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        """Add a batch of inputs (any leading shape, last dim = ``dim``)."""
        x = x.detach().reshape(-1, self.dim).to(torch.float32)
        self.sum += (x.T @ x).to(torch.float64)
        self.count += x.shape[0]

    def hessian(self) -> torch.Tensor:
        """``2 X X^T / n`` (float64)."""
        if self.count == 0:
            raise HessianError("no calibration token reached this layer")
        return 2.0 * self.sum / self.count


def prepare(h: torch.Tensor, w: torch.Tensor, dampening: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H', dead)``: ``h`` (float64, copied) with dead columns set to 1 on the
    diagonal and dampening added; ``w`` has its dead columns zeroed in place.
    ``dead`` is the boolean mask of dead columns."""
    h = h.clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0
    damp = dampening * torch.mean(torch.diagonal(h))
    h += damp * torch.eye(h.shape[0], dtype=h.dtype)
    return h, dead


def inverse_cholesky(h: torch.Tensor, layer: str = "a layer") -> torch.Tensor:
    """The upper-triangular ``U`` with ``U^T U = h^-1`` (float64)."""
    h = h.to(torch.float64)
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise HessianError(f"the Hessian of {layer} is not positive definite; raise dampening")
    hinv = torch.cholesky_inverse(lower)
    upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
    if int(info) != 0:
        raise HessianError(f"the inverse Hessian of {layer} is not positive definite; raise dampening")
    return upper


def weighted_error(delta: torch.Tensor, h: torch.Tensor) -> float:
    """``tr(delta h delta^T) / 2``: with ``h = 2 X X^T / n`` this is the mean over
    tokens of ``||delta x||^2`` (float64)."""
    d = delta.to(torch.float64)
    return float(torch.sum((d @ h) * d) / 2.0)


def row_errors(delta: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """:func:`weighted_error` of each row of ``delta`` (float64): summing a
    layer's rows gives its error, so stacked layers share one product."""
    d = delta.to(torch.float64)
    return torch.sum((d @ h.to(torch.float64)) * d, dim=1) / 2.0
