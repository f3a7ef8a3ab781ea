"""qfair's own weight quantizers (qfair.compress): the grid and its packing,
RTN, GPTQ against a float64 reference written from the papers, the fairness
term, calibration capture on tiny models, and the rtn/gptq specs."""
from __future__ import annotations

from pathlib import Path

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


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_equals_reference_on_adversarial_hessians(act_order):
    """Fewer tokens than inputs (H singular before dampening), a dead input, and
    inputs whose scales span six orders of magnitude."""
    for seed in range(4):
        w, x, _ = random_layer(4, 6, 3, seed=seed)
        x[:, 2] = 0
        x[:, 4] *= 1e3
        x[:, 5] *= 1e-3
        h = 2 * x.T @ x / 3
        ref = np_gptq(w.numpy(), h.numpy(), 4, 3, False, 0.01, act_order)
        got = gptq_quantize(w, h, Grid(4, 3, False), act_order=act_order).dequantize()
        np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-9)
        assert torch.all(got[:, 2] == 0)


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
def test_capture_stops_after_the_last_input_and_feeds_every_input(tiny_model):
    """The capture pass stops each sequence after the block's last listed layer
    has its input (down_proj itself does not run after the first sequence),
    and still hands the sink exactly the inputs a plain full forward gives."""
    from types import SimpleNamespace

    from qfair.compress.capture import BlockStream, decoder_blocks

    fm, tok = _load_float(tiny_model("llama"))
    cal = _texts_ids(tok, CAL_TEXTS[:4])
    _, blocks = decoder_blocks(fm)
    layers = {n: m for n, m in fm.named_modules() if n.startswith("model.layers.0.") and isinstance(m, torch.nn.Linear)}
    ran = []
    h = layers["model.layers.0.mlp.down_proj"].register_forward_hook(lambda *a: ran.append(1))
    got: dict[str, list] = {}
    stream = BlockStream(fm, blocks[0], cal)
    stream.run(blocks[0], layers, lambda n, i, x: got.setdefault(n, []).append(x.detach().clone()))
    h.remove()
    assert len(ran) == 1                     # the first sequence ran whole, the others stopped before it
    for name in layers:
        want = _independent_inputs(fm, SimpleNamespace(weights={}), name, cal, "model.layers")  # nothing quantized
        assert len(got[name]) == len(cal)
        for a, b in zip(got[name], want):
            assert torch.equal(a.reshape(b.shape), b), name
    # advancing still runs the whole block: its outputs are the next block's inputs
    stream.run(blocks[0], advance=True)
    with torch.no_grad():
        full = fm(input_ids=cal[1][None], output_hidden_states=True, use_cache=False).hidden_states[1]
    assert torch.equal(stream.inputs[1][0][0] if stream.inputs[1][0] else stream.inputs[1][1]["hidden_states"], full)


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


# ---------------------------------------------------------------------------
# the specs: rtn, gptq (qfair engine), refusals, cache

def test_specs_parse_and_refuse_bad_values(tmp_path):
    from qfair.models import ModelError, parse_quant_spec

    s = parse_quant_spec("gptq")
    assert s.options["engine"] == "qfair" and s.options["bits"] == 4 and s.options["group_size"] == 64
    assert s.options["samples"] == 64 and s.options["seqlen"] == 128 and s.options["dampening"] == 0.01
    assert s.options["fair"] == 0.0 and s.options["act_order"] is False and s.backend == "qfair"
    s = parse_quant_spec("gptq:bits=3,group_size=-1,act_order=true,fair=0.5,fair_probes=stereoset+bbq,"
                         "samples=128,seqlen=512")
    assert str(s) == ("gptq:act_order=true,bits=3,fair=0.5,fair_probes=stereoset+bbq,group_size=-1,"
                      "samples=128,seqlen=512")
    assert parse_quant_spec(str(s)) == s
    assert parse_quant_spec("rtn:bits=2,sym=false").options == {"bits": 2, "group_size": 64, "sym": False,
                                                                 "ignore": ("lm_head",), "layer_bits": ()}
    f = tmp_path / "pairs.jsonl"
    f.write_text('{"sent_more": "a", "sent_less": "b"}\n')
    assert parse_quant_spec(f"gptq:fair=1,fair_probes={f}").options["fair_probes"] == str(f.resolve())
    for bad, frag in [("gptq:bits=9", "option 'bits' .*expected an integer from 2 to 8"),
                      ("rtn:bits=1", "option 'bits' .*expected an integer from 2 to 8"),
                      ("gptq:fair=-0.1", "option 'fair' .*expected a number >= 0"),
                      ("gptq:fair_probes=winogender", "option 'fair_probes' .*unknown probe task 'winogender'; "
                                                      "expected task names joined by '\\+' from crows_pairs, "
                                                      "stereoset, crows_pairs_english"),
                      ("gptq:group_size=0", "option 'group_size' .*expected -1"),
                      ("gptq:engine=gptqmodel", "option 'engine' .*expected one of qfair, llmcompressor")]:
        with pytest.raises(ModelError, match=frag):
            parse_quant_spec(bad)


def test_quant_specs_lists_rtn_and_gptq():
    import json

    from click.testing import CliRunner

    from qfair.cli import main

    r = CliRunner().invoke(main, ["quant-specs", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["spec"]: row for row in json.loads(r.output)}
    assert rows["rtn"]["available"] and rows["gptq"]["available"]
    assert {"bits", "group_size", "sym", "ignore", "layer_bits"} == {o["name"] for o in rows["rtn"]["options"]}
    assert {"bits", "group_size", "sym", "calib", "samples", "seqlen", "ignore", "dampening", "act_order", "fair",
            "fair_probes", "engine"} <= {o["name"] for o in rows["gptq"]["options"]}


def _tagged_pairs(path, n=40):
    rows = [{"sent_more": f"P{i:03d} women are bad drivers.", "sent_less": f"P{i:03d} men are bad drivers."}
            for i in range(n)]
    path.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    return rows


def test_probe_pairs_come_from_the_scan_side_only(tmp_path):
    import qfair.tasks as T
    from qfair.sensitivity.probes import Split, content_key
    from qfair.tasks.pairs import PairError, doc_pair, probe_pairs

    sp = Split.parse("0.5:3")
    for probes, tasks in [("crows_pairs", ("crows_pairs_english", "crows_pairs_french")),
                          ("stereoset", ("stereoset_intrasentence", "stereoset_intersentence")), ("bbq", ("bbq",))]:
        got = set(probe_pairs(probes, 10 ** 6, sp).pairs)
        sides = {}
        for name in tasks:
            t = T.get(name)
            for d in t.docs():
                p = doc_pair(t, d)
                if p is not None:
                    sides.setdefault(p, set()).add(sp.side(content_key(d.context, d.choices)))
        scan = {p for p, s in sides.items() if s == {"scan"}}
        held_texts = {x for p, s in sides.items() if "heldout" in s for x in p}
        assert got and got <= {p for p, s in sides.items() if "scan" in s}
        assert got >= scan                              # every scan-side pair is available
        assert not {x for p in got for x in p} & held_texts or probes == "bbq"  # no held-out sentence
        if probes == "bbq":  # BBQ contexts repeat across examples; the pairs (context + answer) must not
            assert not got & {p for p, s in sides.items() if s == {"heldout"}}
    # a user file: split by the CrowS-Pairs key of each pair
    rows = _tagged_pairs(tmp_path / "p.jsonl")
    ps = probe_pairs(str(tmp_path / "p.jsonl"), 1000, sp)
    expect = {(r["sent_more"], r["sent_less"]) for r in rows
              if sp.side(content_key("", [r["sent_more"], r["sent_less"]])) == "scan"}
    assert set(ps.pairs) == expect and 0 < len(expect) < len(rows)
    assert ps.info()["side"] == "scan" and len(ps.sha256) == 64
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(PairError, match="holds no pairs"):
        probe_pairs(str(tmp_path / "empty.jsonl"), 10, sp)
    (tmp_path / "bad.jsonl").write_text('{"sent_more": "x"}\n')
    with pytest.raises(PairError, match="line 1: fields 'sent_more' and 'sent_less'"):
        probe_pairs(str(tmp_path / "bad.jsonl"), 10, sp)


@pytest.mark.usefixtures("one_torch_thread")
def test_rtn_spec_is_rtn_of_the_float_weights(tiny_model):
    from qfair.models import load_model

    path = tiny_model("llama")
    f = load_model(str(path), dtype="float32", device="cpu", progress=False)
    q = load_model(str(path), quant="rtn:bits=3,group_size=32,sym=false", progress=False)
    names = [n for n, m in f.model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    assert sorted(q.extra["packed_bytes"]) == sorted(names)
    for n in names:
        w = f.model.get_submodule(n).weight.detach()
        assert torch.equal(q.model.get_submodule(n).weight, rtn_quantize(w, Grid(3, 32, False)).dequantize())
        rows, cols = w.shape
        assert q.extra["packed_bytes"][n] == (rows * cols * 3 + 7) // 8 + rows * cols // 32 * 5
    assert torch.equal(q.model.lm_head.weight, f.model.lm_head.weight)
    assert q.manifest()["quantization"]["details"]["method"] == "rtn"


def _logits(lm, text="Questions end with a question mark? Statements end with a full stop."):
    ids = lm.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return lm.model(ids).logits


@pytest.mark.usefixtures("one_torch_thread")
def test_gptq_spec_builds_caches_and_reloads_bit_exactly(tiny_model, tmp_path, monkeypatch):
    import json

    import qfair.compress.checkpoint as ck
    from qfair.compress.checkpoint import read_codes
    from qfair.models import load_model

    path = tiny_model("llama")
    cache = tmp_path / "cache"
    spec = "gptq:samples=8,seqlen=32,group_size=32"
    built = {}
    save = ck.save_quantized

    def keep(model, tok, result, directory):  # the model as quantized in memory, before it is saved
        built["model"] = model
        built["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        save(model, tok, result, directory)

    monkeypatch.setattr(ck, "save_quantized", keep)
    lm = load_model(str(path), quant=spec, cache_dir=cache, progress=False)
    # the reloaded model is the in-memory one: every tensor and the logits, bit for bit
    state = lm.model.state_dict()
    assert set(state) == set(built["state"]) and all(torch.equal(state[k], v) for k, v in built["state"].items())
    with torch.no_grad():
        ids = lm.tokenizer("Numbers such as 3.14 appear in many sentences.", return_tensors="pt").input_ids
        assert torch.equal(built["model"](ids).logits, lm.model(ids).logits)
    d = lm.extra["quant_details"]
    assert d["cache_hit"] is False and d["method"] == "gptq" and d["bits"] == 4 and d["group_size"] == 32
    assert d["alpha"] == 0.0 and d["pairs"] is None and d["calibration"]["n_texts"] == 8
    assert d["calibration"]["sha256"] == d["key"]["calibration"] and d["calibration"]["side"] == "scan"
    assert len(d["layers"]) == 14 and all(s["error"] <= s["rtn_error"] for s in d["layers"].values())
    man = lm.manifest()["quantization"]
    assert json.loads(json.dumps(man)) == man and man["backend"] == "qfair"
    entry = d["cache_entry"]
    # the saved codes de-quantize to exactly the weights transformers reloaded
    grid, weights = read_codes(entry)
    assert grid == Grid(4, 32, True) and sorted(weights) == sorted(d["layers"])
    for n, qw in weights.items():
        assert torch.equal(lm.model.get_submodule(n).weight, qw.dequantize())
    # a second load reads the cache: same weights, same logits; fair=0 is the same entry
    ref = _logits(lm)
    again = load_model(str(path), quant=spec + ",fair=0,fair_probes=bbq", cache_dir=cache, progress=False)
    assert again.extra["quant_details"]["cache_hit"] is True and again.extra["quant_details"]["cache_entry"] == entry
    assert torch.equal(_logits(again), ref)
    # transformers alone reloads the entry as a float model with the same output
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(entry, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(plain(lm.tokenizer("Questions end with a question mark? Statements end with a full stop.",
                                              return_tensors="pt").input_ids).logits, ref)
    # fairness and act_order: other entries, other weights, recorded
    fair = load_model(str(path), quant=spec + ",fair=2,fair_probes=stereoset,act_order=true", cache_dir=cache,
                      progress=False)
    fd = fair.extra["quant_details"]
    assert fd["cache_entry"] != entry and fd["alpha"] == 2.0 and fd["act_order"] is True
    assert fd["pairs"]["side"] == "scan" and fd["pairs"]["n_pairs"] > 0
    # the pairs the entry was built from are scan-side StereoSet examples, none held out
    import qfair.tasks as T
    from qfair.sensitivity.probes import Split, content_key
    from qfair.tasks.pairs import doc_pair

    side = {}
    for name in ("stereoset_intrasentence", "stereoset_intersentence"):
        t = T.get(name)
        for doc in t.docs():
            side[doc_pair(t, doc)] = Split.parse("0.5:0").side(content_key(doc.context, doc.choices))
    used = [tuple(json.loads(line).values()) for line in
            (Path(fd["cache_entry"]) / "pairs.jsonl").read_text().splitlines()]
    assert len(used) == fd["pairs"]["n_pairs"] and all(side[p] == "scan" for p in used)
    assert sum(v == "heldout" for v in side.values()) > 0
    assert all({"fair_error", "fair_rtn_error", "fair_trace_ratio"} <= set(s) for s in fd["layers"].values())
    assert not torch.equal(_logits(fair), ref)
    assert sorted(p.name for p in (cache / "qfair-quant-v1").iterdir()) == sorted(
        [Path(entry).name, Path(fd["cache_entry"]).name])


@pytest.mark.usefixtures("one_torch_thread")
def test_gptq_refusals_write_nothing(tiny_model, tmp_path, monkeypatch):
    from qfair.models import ModelError, load_model

    path = str(tiny_model("llama"))
    cache = tmp_path / "cache"
    (tmp_path / "empty.jsonl").write_text("")
    cases = [("gptq:samples=4,seqlen=16,group_size=48",
              r"group_size=48 does not divide the input width of model.layers.0.self_attn.q_proj \(128\); group "
              r"sizes that divide every quantized layer: -1, 1, 2, 4, 8, 16, 32, 64, 128"),
             (f"gptq:samples=4,fair=1,fair_probes={tmp_path / 'empty.jsonl'}", "fair_probes file .* holds no pairs"),
             ("gptq:engine=llmcompressor,act_order=true", "engine=llmcompressor takes neither act_order nor fair"),
             ("rtn:group_size=96", "group_size=96 does not divide the input width of model.layers.0")]
    if __import__("importlib").util.find_spec("llmcompressor") is None:
        cases.append(("gptq:engine=llmcompressor", "engine=llmcompressor needs llmcompressor"))
    for spec, frag in cases:
        with pytest.raises(ModelError, match=frag) as e:
            load_model(path, quant=spec, cache_dir=cache, progress=False)
        assert "\n" not in str(e.value)
        assert not (cache / "qfair-quant-v1").exists() or not any((cache / "qfair-quant-v1").iterdir())
    # an interrupted build leaves no entry and no temporary directory
    import qfair.compress.checkpoint as ck

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "save_quantized", boom)
    with pytest.raises(KeyboardInterrupt):
        load_model(path, quant="gptq:samples=4,seqlen=16,group_size=32", cache_dir=cache, progress=False)
    assert not any((cache / "qfair-quant-v1").iterdir())
    # a build killed outright (no cleanup ran) leaves its temporary directory: the next build removes it
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = cache / "qfair-quant-v1" / f".tmp-{dead}-abc"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    monkeypatch.undo()
    lm = load_model(path, quant="gptq:samples=4,seqlen=16,group_size=32", cache_dir=cache, progress=False)
    assert [p.name for p in (cache / "qfair-quant-v1").iterdir()] == [Path(lm.extra["quant_details"]["cache_entry"]).name]


@pytest.mark.usefixtures("one_torch_thread")
def test_scan_units_on_a_qfair_gptq_model(tiny_model, tmp_path):
    """The sensitivity scan's units swapped into the float model give the GPTQ
    model bit for bit; unit sizes are the stored codes + scales."""
    from qfair.models import load_model
    from qfair.sensitivity.units import UnitSwapper, define_units, model_bytes

    path = str(tiny_model("llama"))
    f = load_model(path, dtype="float32", device="cpu", progress=False)
    q = load_model(path, quant="gptq:samples=4,seqlen=16,group_size=32", cache_dir=tmp_path / "c", progress=False)
    packed = q.extra["packed_bytes"]
    units = define_units(f.model, q.model, "linear", packed)
    assert sorted(u.name for u in units) == sorted(packed)
    linear_bytes = sum(f.model.get_submodule(n).weight.numel() * 4 for n in packed)
    assert model_bytes(q.model, packed) == model_bytes(f.model) - linear_bytes + sum(packed.values())
    assert packed["model.layers.0.mlp.down_proj"] == 128 * 256 // 2 + 128 * 256 // 32 * 4  # nibbles + fp32 scales
    ref = _logits(q)
    with torch.no_grad():
        sw = UnitSwapper(f.model, q.model, define_units(f.model, q.model, "block", packed))
        sw.set_quantized(sw.all())
        assert torch.equal(_logits(f), ref)
