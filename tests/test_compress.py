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


# ---------------------------------------------------------------------------
# the fairness term (one layer)

def random_pairs(cols, m, seed):
    g = torch.Generator().manual_seed(100 + seed)
    return torch.randn(m, cols, generator=g, dtype=torch.float64) * torch.rand(cols, generator=g, dtype=torch.float64)


def test_fair_alpha_zero_is_plain_gptq_bit_for_bit():
    from qfair.compress.fair import fair_hessian

    w, x, h = random_layer(16, 32, 200, seed=1, dtype=torch.float32)
    d = random_pairs(32, 8, 1)
    f = 2 * d.T @ d / 8
    for act_order in (False, True):
        a = gptq_quantize(w, fair_hessian(h, f, 0.0), Grid(4, 8), act_order=act_order)
        b = gptq_quantize(w, h, Grid(4, 8), act_order=act_order)
        assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale)


def test_fair_alpha_reduces_the_pair_difference_error():
    from qfair.compress.fair import FairnessError, fair_hessian

    for seed in range(6):
        w, x, h = random_layer(32, 64, 400, seed=seed, dtype=torch.float32)
        d = random_pairs(64, 12, seed)
        f = 2 * d.T @ d / 12
        errs = []
        for alpha in (0.0, 1.0, 10.0):
            qw = gptq_quantize(w, fair_hessian(h, f, alpha), Grid(3, 16))
            errs.append(weighted_error(w - qw.dequantize(), f))
        assert errs[2] < errs[1] < errs[0], (seed, errs)
    with pytest.raises(FairnessError, match="fair=-0.5: expected a number >= 0"):
        fair_hessian(h, f, -0.5)


def test_pair_alignment_pools_after_the_common_prefix():
    from qfair.compress.fair import FairnessError, PairAccumulator, pair_sequences, pooling_starts

    t = torch.tensor
    assert pooling_starts(t([1, 2, 3, 4]), t([1, 2, 5])) == (2, 2)
    assert pooling_starts(t([1, 2]), t([1, 2, 3])) == (1, 2)      # a prefix keeps its last token
    assert pooling_starts(t([7, 2]), t([1, 2, 3])) == (0, 0)
    seqs, starts = pair_sequences([(t([1, 2, 3]), t([1, 2, 3])), (t([1, 2, 3, 4]), t([1, 9]))])
    assert len(seqs) == 2 and starts == [1, 1]                    # the identical pair is dropped
    with pytest.raises(FairnessError, match="no pair of distinct sentences"):
        pair_sequences([(t([1, 2]), t([1, 2]))])
    acc = PairAccumulator(starts)
    xs = torch.arange(12.0).reshape(1, 4, 3)
    xa = -torch.arange(6.0).reshape(1, 2, 3)
    acc("l", 0, xs)
    acc("l", 1, xa)
    diff = xs[0, 1:].double().mean(0) - xa[0, 1:].double().mean(0)
    assert torch.equal(acc.differences("l")[0], diff)
    assert torch.allclose(acc.hessian("l"), 2 * torch.outer(diff, diff))


# ---------------------------------------------------------------------------
# a whole tiny model: sequential capture checked by an independent capture

def _texts_ids(tok, texts):
    return [tok(s, return_tensors="pt").input_ids[0] for s in texts]


CAL_TEXTS = ["The river keeps its own calendar, rising in spring and falling by late summer.",
             "A careful baker weighs the flour twice and trusts the oven thermometer once.",
             "When the train is late, the station clock looks slower than it really is.",
             "Good evidence is repeatable: measure twice, write down both, compare honestly.",
             "Children in the valley learn three languages before they learn to swim, they say."] * 4
PAIR_TEXTS = [("The nurse said she was tired.", "The nurse said he was tired."),
              ("Women are bad at maths.", "Men are bad at maths."),
              ("The old man could not use the phone.", "The young man could not use the phone."),
              ("Poor people are lazy.", "Rich people are lazy.")]


def _load_float(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    m.eval()
    return m, AutoTokenizer.from_pretrained(str(path))


def _independent_inputs(float_model, result, layer, seqs, prefix):
    """The inputs of ``layer`` over ``seqs`` on a model whose blocks before the
    layer's block (all blocks for a layer outside them) carry the quantized
    weights: captured with one hook on a plain full forward pass."""
    import copy

    m = copy.deepcopy(float_model)
    i = int(layer[len(prefix) + 1:].split(".")[0]) if layer.startswith(prefix + ".") else 10 ** 9
    for name, qw in result.weights.items():
        if name.startswith(prefix + ".") and int(name[len(prefix) + 1:].split(".")[0]) < i:
            m.get_submodule(name).weight.data = qw.dequantize()
    xs = []
    h = m.get_submodule(layer).register_forward_pre_hook(lambda _m, a: xs.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for s in seqs:
            m(input_ids=s[None], use_cache=False)
    h.remove()
    return xs


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("arch,ignore", [("llama", ("lm_head",)), ("bloom", ())])
def test_model_gptq_beats_rtn_on_every_layer_with_independent_inputs(tiny_model, arch, ignore):
    import copy

    from qfair.compress.capture import decoder_blocks
    from qfair.compress.model import quantize_model

    fm, tok = _load_float(tiny_model(arch))
    cal = _texts_ids(tok, CAL_TEXTS)
    qm = copy.deepcopy(fm)
    res = quantize_model(qm, "gptq", Grid(4, 32, False), calibration=cal, ignore=ignore, act_order=True)
    prefix, _ = decoder_blocks(fm)
    assert set(res.weights) == {n for n, mod in fm.named_modules() if isinstance(mod, torch.nn.Linear)
                                and n not in ignore}
    for name, qw in res.weights.items():
        x = torch.cat(_independent_inputs(fm, res, name, cal, prefix)).double()
        w = fm.get_submodule(name).weight.detach().double()
        err = float(((x @ (w - qw.dequantize().double()).T) ** 2).sum())
        rtn = float(((x @ (w - rtn_quantize(w.float(), Grid(4, 32, False)).dequantize().double()).T) ** 2).sum())
        assert err <= rtn, (name, err, rtn)
        assert res.layers[name]["error"] == pytest.approx(err / x.shape[0], rel=1e-4)
        assert res.layers[name]["rtn_error"] == pytest.approx(rtn / x.shape[0], rel=1e-4)
        # the model holds the de-quantized codes
        assert torch.equal(qm.get_submodule(name).weight, qw.dequantize())


@pytest.mark.usefixtures("one_torch_thread")
def test_model_fair_alpha_zero_bitwise_and_alpha_reduces_pair_error(tiny_model):
    import copy

    from qfair.compress.model import quantize_model

    fm, tok = _load_float(tiny_model("llama"))
    cal = _texts_ids(tok, CAL_TEXTS)
    pairs = [tuple(_texts_ids(tok, p)) for p in PAIR_TEXTS]
    plain = quantize_model(copy.deepcopy(fm), "gptq", Grid(3, 32), calibration=cal)
    zero = quantize_model(copy.deepcopy(fm), "gptq", Grid(3, 32), calibration=cal, pairs=pairs, alpha=0.0)
    fair = quantize_model(copy.deepcopy(fm), "gptq", Grid(3, 32), calibration=cal, pairs=pairs, alpha=20.0)
    for n in plain.weights:
        assert torch.equal(plain.weights[n].codes, zero.weights[n].codes)
        assert torch.equal(plain.weights[n].scale, zero.weights[n].scale)
    # block 0 sees the same inputs in both runs: compare ||(W - What) d||^2 on independently pooled differences
    from qfair.compress.fair import pooling_starts

    total = {"plain": 0.0, "fair": 0.0}
    for name in [n for n in plain.weights if n.startswith("model.layers.0.")]:
        seqs = [s for p in pairs for s in p]
        xs = _independent_inputs(fm, plain, name, seqs, "model.layers")
        diffs = []
        for k, (s, a) in enumerate(pairs):
            i, j = pooling_starts(s, a)
            diffs.append(xs[2 * k][i:].double().mean(0) - xs[2 * k + 1][j:].double().mean(0))
        d = torch.stack(diffs)
        w = fm.get_submodule(name).weight.detach().double()
        for key, res in (("plain", plain), ("fair", fair)):
            total[key] += float(((d @ (w - res.weights[name].dequantize().double()).T) ** 2).sum())
        assert fair.layers[name]["fair_error"] == pytest.approx(
            float(((d @ (w - fair.weights[name].dequantize().double()).T) ** 2).sum()) / len(pairs), rel=1e-4)
    assert total["fair"] < 0.5 * total["plain"], total
