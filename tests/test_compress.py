"""qfair's own weight quantizers (qfair.compress): the grid and its packing,
RTN, GPTQ against a float64 reference written from the papers, the fairness
term, calibration capture on tiny models, and the rtn/gptq specs."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from qfair.compress.gptq import gptq_quantize  # noqa: E402
from qfair.compress.grid import Grid, GridError, pack, unpack  # noqa: E402
from qfair.compress.hessian import weighted_error  # noqa: E402
from qfair.compress.rtn import rtn_quantize  # noqa: E402

# ---------------------------------------------------------------------------
# independent float64 numpy references

def np_fit(w: np.ndarray, bits: int, sym: bool) -> tuple[np.ndarray, np.ndarray]:
    """Min-max grid of each row of ``w`` (the convention documented in qfair.compress.grid)."""
    maxq = 2 ** bits - 1
    if sym:
        scale = np.max(np.abs(w), axis=1) / (2 ** (bits - 1) - 1)
        zero = np.full(w.shape[0], 2.0 ** (bits - 1))
        scale[scale == 0] = 1.0
    else:
        lo, hi = np.minimum(w.min(axis=1), 0), np.maximum(w.max(axis=1), 0)
        scale = (hi - lo) / maxq
        scale[scale == 0] = 1.0
        zero = np.clip(np.round(-lo / scale), 0, maxq)   # np.round: half to even, like torch.round
    return scale, zero


def np_quant(w: np.ndarray, scale, zero, bits: int) -> np.ndarray:
    q = np.clip(np.round(w / scale) + zero, 0, 2 ** bits - 1)
    return (q - zero) * scale


def np_rtn(w: np.ndarray, bits: int, gs: int, sym: bool) -> np.ndarray:
    out = np.empty_like(w)
    gs = w.shape[1] if gs == -1 else gs
    for g in range(0, w.shape[1], gs):
        s, z = np_fit(w[:, g:g + gs], bits, sym)
        out[:, g:g + gs] = np_quant(w[:, g:g + gs], s[:, None], z[:, None], bits)
    return out


def np_gptq(w: np.ndarray, h: np.ndarray, bits: int, gs: int, sym: bool, damp: float, act_order: bool) -> np.ndarray:
    """The OBQ/GPTQ column loop with the explicit inverse Hessian: quantize column
    c, move its error onto the other columns through H^-1[c, :] / H^-1[c, c], then
    remove c from H^-1 by one step of Gaussian elimination. O(d^3), no Cholesky,
    no lazy blocks. A group's grid is fitted from its current weights when its
    first column is visited."""
    w = w.astype(np.float64).copy()
    h = h.astype(np.float64).copy()
    d = w.shape[1]
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * np.mean(np.diag(h)) * np.eye(d)
    hinv = np.linalg.inv(h)
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(d)
    gs = d if gs == -1 else gs
    grids: dict[int, tuple] = {}
    out = np.zeros_like(w)
    for c in order:
        g = c // gs
        if g not in grids:
            grids[g] = np_fit(w[:, g * gs:(g + 1) * gs], bits, sym)
        s, z = grids[g]
        q = np_quant(w[:, c], s, z, bits)
        out[:, c] = q
        err = (w[:, c] - q) / hinv[c, c]
        w -= np.outer(err, hinv[c, :])
        w[:, c] = q
        hinv -= np.outer(hinv[:, c], hinv[c, :]) / hinv[c, c]
    return out


def random_layer(rows, cols, n, seed, dtype=torch.float64, correlated=True):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=dtype)
    x = torch.randn(n, cols, generator=g, dtype=dtype)
    if correlated:  # inputs with unequal scales and correlations, as real activations have
        x = x @ torch.randn(cols, cols, generator=g, dtype=dtype) * torch.rand(cols, generator=g, dtype=dtype) * 3
    h = 2 * x.T.double() @ x.double() / n
    return w, x, h


def recon(w, what, x):
    return float(((x.double() @ (w.double() - what.double()).T) ** 2).sum())


# ---------------------------------------------------------------------------
# the grid

@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("gs", [-1, 4])
def test_rtn_equals_numpy_reference(bits, sym, gs):
    w, _, _ = random_layer(6, 16, 1, seed=bits * 10 + sym)
    w[0] = 0.0                      # an all-zero row
    w[1, :4] = torch.tensor([7.0, 0.5, 1.5, -2.5])  # 4-bit symmetric: scale 1, exact ties
    w[2] = w[2].abs()              # one-signed rows: the grid still holds 0
    qw = rtn_quantize(w, Grid(bits, gs, sym))
    ref = np_rtn(w.numpy(), bits, gs, sym)
    np.testing.assert_array_equal(qw.dequantize().numpy(), ref)
    assert int(qw.codes.max()) <= 2 ** bits - 1
    np.testing.assert_array_equal(qw.dequantize()[0].numpy(), 0.0)
    if bits == 4 and sym and gs == 4:  # ties go to the even neighbour (torch.round, np.round), not away from 0
        assert qw.dequantize()[1, :4].tolist() == [7.0, 0.0, 2.0, -2.0]


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("sym", [True, False])
def test_pack_unpack_dequantize_is_fake_quantization(bits, sym):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(7, 24, generator=g) * torch.logspace(-3, 2, 24)
    grid = Grid(bits, 8, sym)
    qw = rtn_quantize(w, grid)
    fake = grid.dequantize(grid.quantize(w, *grid.fit_matrix(w)), *grid.fit_matrix(w))
    from qfair.compress.quantized import QuantizedWeight

    back = QuantizedWeight.from_tensors(qw.to_tensors(), grid)
    assert torch.equal(back.codes, qw.codes)
    assert torch.equal(back.dequantize(), fake)  # bitwise
    codes = torch.randint(0, 2 ** bits, (5, 13), generator=g, dtype=torch.uint8)
    p = pack(codes, bits)
    assert p.numel() == (65 * bits + 7) // 8 and torch.equal(unpack(p, bits, (5, 13)), codes)
    # the bit order: LSB first
    assert pack(torch.tensor([1, 0, 0, 0, 0, 0, 0, 0], dtype=torch.uint8), 2).tolist() == [1, 0]


def test_grid_refuses_bad_settings():
    for bits in (1, 9, 0):
        with pytest.raises(GridError, match="bits=.*2 to 8"):
            Grid(bits, 64)
    with pytest.raises(GridError, match="group_size=0"):
        Grid(4, 0)
    with pytest.raises(GridError, match=r"model.layers.0.mlp.down_proj \(576\); sizes that would work: -1, 1, 2"):
        Grid(4, 128).n_groups(576, "model.layers.0.mlp.down_proj")


# ---------------------------------------------------------------------------
# GPTQ

@pytest.mark.parametrize("cols,gs", [(3, -1), (4, 2), (6, 3), (6, -1)])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("sym", [True, False])
def test_gptq_equals_float64_reference_on_small_layers(cols, gs, act_order, sym):
    for seed in range(5):
        w, x, h = random_layer(5, cols, 40, seed=seed)
        ref = np_gptq(w.numpy(), h.numpy(), 3, gs, sym, 0.01, act_order)
        for bs in (1, 2, 128):
            qw = gptq_quantize(w, h, Grid(3, gs, sym), dampening=0.01, act_order=act_order, block_size=bs)
            np.testing.assert_allclose(qw.dequantize().numpy(), ref, rtol=0, atol=1e-12)


def test_gptq_lazy_blocks_equal_column_by_column():
    w, x, h = random_layer(16, 64, 300, seed=3)
    for act_order in (False, True):
        a = gptq_quantize(w, h, Grid(4, 16, False), act_order=act_order, block_size=1)
        b = gptq_quantize(w, h, Grid(4, 16, False), act_order=act_order, block_size=24)  # blocks cut groups
        assert torch.equal(a.codes, b.codes)
        np.testing.assert_allclose(a.scale.numpy(), b.scale.numpy(), rtol=1e-12)


def test_gptq_dead_columns_and_act_order_differ():
    w, x, h = random_layer(8, 12, 100, seed=4)
    x[:, 5] = 0
    h = 2 * x.T @ x / 100
    qw = gptq_quantize(w, h, Grid(4, 4, True))
    assert torch.all(qw.dequantize()[:, 5] == 0) and torch.isfinite(qw.dequantize()).all()
    np.testing.assert_allclose(qw.dequantize().numpy(), np_gptq(w.numpy(), h.numpy(), 4, 4, True, 0.01, False),
                               atol=1e-12)
    assert not torch.equal(gptq_quantize(w, h, Grid(3, -1), act_order=True).codes,
                           gptq_quantize(w, h, Grid(3, -1)).codes)


@pytest.mark.parametrize("bits,gs,sym", [(2, -1, True), (3, 16, False), (4, 32, True), (8, 64, False)])
def test_gptq_reconstruction_error_at_most_rtn_random(bits, gs, sym):
    for seed in range(4):
        w, x, h = random_layer(48, 128, 512, seed=seed, dtype=torch.float32)
        for act_order in (False, True):
            g = gptq_quantize(w, h, Grid(bits, gs, sym), act_order=act_order)
            r = rtn_quantize(w, Grid(bits, gs, sym))
            eg, er = recon(w, g.dequantize(), x), recon(w, r.dequantize(), x)
            assert eg <= er, (seed, act_order, eg, er)
            # the Hessian form of the error is the same number (mean over tokens, float64)
            assert weighted_error(w - g.dequantize(), h) == pytest.approx(eg / 512, rel=1e-6)
