"""Scoring rules (lm-evaluation-harness conventions) and the shared-context path.

Oracles: the plain full-sequence computation written out here with torch
(independent of qfair.scoring), numpy/scipy for the per-token scalars, and
hand-derived cases for acc / acc_norm / mc2. When lm-eval is installed its own
``HFLM._encode_pair`` is checked too (skipped otherwise; it is not in CI).
"""
from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import scipy.stats

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from qfair import scoring as S  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = ("the a cat dog sat on mat river bank flows quickly slowly under bridge green "
         "café naïve über 東京 emoji 🙂 ok yes no maybe , . ? ! \" ' ( ) 12 345").split()


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


@pytest.fixture(scope="module", params=["llama", "mistral", "bloom", "opt"])
def tiny(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qfair.models.tiny import make_tiny_model

    path = make_tiny_model(request.param, tmp_path_factory.mktemp(request.param) / "m", seed=3)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    return request.param, model, tok


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qfair.models.tiny import make_tiny_model

    path = make_tiny_model("llama", tmp_path_factory.mktemp("llama") / "m", seed=5)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


# ---------------------------------------------------------------------------
# text -> tokens
# ---------------------------------------------------------------------------

def test_whitespace_moves_to_continuation():
    assert S.split_whitespace("Question: x?\nAnswer:", " yes") == ("Question: x?\nAnswer:", " yes")
    assert S.split_whitespace("Answer: \n", " yes") == ("Answer:", " \n yes")
    assert S.split_whitespace("   ", "x") == ("", "   x")
    assert S.split_whitespace("", " x") == ("", " x")
    # unicode whitespace counts as whitespace (str.rstrip)
    assert S.split_whitespace("a\u00a0\u3000", "b") == ("a", "\u00a0\u3000b")


def test_encode_pair_is_tail_of_whole_encoding(llama):
    _, tok = llama
    rng = random.Random(0)
    for _ in range(200):
        ctx = _text(rng, 1, 12) + rng.choice(["", " ", "\n", ":", ": ", "\n\n", "?"])
        cont = rng.choice([" ", "", "\n"]) + _text(rng, 1, 6)
        c_enc, k_enc = S.encode_pair(tok, ctx, cont)
        # independent derivation of the rule
        n = len(ctx) - len(ctx.rstrip())
        c2, k2 = (ctx[:-n], ctx[-n:] + cont) if n else (ctx, cont)
        whole = tok(c2 + k2)["input_ids"]  # the tokenizer's default special tokens, as lm-eval 0.4
        ctx_ids = tok(c2)["input_ids"]
        assert c_enc == ctx_ids
        assert k_enc == whole[len(ctx_ids):]
        assert c_enc[0] == tok.bos_token_id  # this Llama tokenizer prepends BOS
        assert tok.bos_token_id not in k_enc
        # forcing lm-eval's add_bos_token=False drops it
        c3, k3 = S.encode_pair(tok, ctx, cont, add_special_tokens=False)
        assert c3 == tok(c2, add_special_tokens=False)["input_ids"]
        assert k3 == tok(c2 + k2, add_special_tokens=False)["input_ids"][len(c3):]


def test_empty_context_uses_bos_then_eos(llama):
    _, tok = llama
    c, k = S.encode_pair(tok, "", "A sentence.")
    assert c == [tok.bos_token_id]
    assert k == tok("A sentence.", add_special_tokens=False)["input_ids"]
    # a continuation that itself starts with the prefix token keeps it as the context
    c, k = S.encode_pair(tok, "", "<s>A sentence.")
    assert c == [tok.bos_token_id] and k == tok("A sentence.", add_special_tokens=False)["input_ids"]
    # a context that starts with the BOS text gets no second BOS
    c, _ = S.encode_pair(tok, "<s>Hello", " there")
    assert c == tok("<s>Hello", add_special_tokens=False)["input_ids"] and c.count(tok.bos_token_id) == 1

    class NoBos:
        bos_token_id = None
        eos_token_id = 7

        def encode(self, text, add_special_tokens=True):
            return [ord(ch) for ch in text]

        def decode(self, ids):
            return "".join(map(chr, ids))

    assert S.encode_pair(NoBos(), "", "ab") == ([7], [97, 98])
    NoBos.eos_token_id = None
    with pytest.raises(ValueError, match="neither a BOS nor an EOS"):
        S.encode_pair(NoBos(), "", "ab")


def test_encode_example_shares_context(llama):
    _, tok = llama
    ex = S.encode_example(tok, "Question: why?\nAnswer:", ["because", "no reason", ""], " ")
    c, k = S.encode_pair(tok, "Question: why?\nAnswer:", " no reason")
    assert ex.context_enc == c and ex.conts[1] == k
    assert ex.n_rows == sum(len(x) for x in ex.conts)


def test_encode_pair_matches_lm_eval_when_installed(llama):
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM

    model, tok = llama
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1, device="cpu")
    rng = random.Random(1)
    for i in range(60):
        ctx = "" if i % 5 == 0 else _text(rng, 1, 10) + rng.choice(["", " ", "\n", ": "])
        cont = " " + _text(rng, 1, 5)
        # lm-eval's loglikelihood() tokenises each (context, continuation) pair, then scores tokens
        seen = []
        lm._loglikelihood_tokens = lambda reqs, seen=seen, **kw: seen.extend(reqs) or [(0.0, True)] * len(reqs)

        class Req:
            args = (ctx, cont)

        lm.loglikelihood([Req()], disable_tqdm=True)
        _, c_enc, k_enc = seen[0]
        assert (list(c_enc), list(k_enc)) == S.encode_pair(tok, ctx, cont)


# ---------------------------------------------------------------------------
# log-likelihoods: shared context == naive == independent oracle
# ---------------------------------------------------------------------------

def _oracle(model, ctx_enc, cont):
    """loglik, is_greedy, rows by a plain forward pass (independent of qfair)."""
    ids = torch.tensor([ctx_enc + cont])
    with torch.no_grad():
        logits = model(ids).logits[0]
        logits = logits if logits.dtype == torch.float64 else logits.float()
    lp = torch.log_softmax(logits, -1)[len(ctx_enc) - 1:len(ctx_enc) - 1 + len(cont)]
    tgt = torch.tensor(cont)
    ll = lp[torch.arange(len(cont)), tgt].double().sum().item()
    greedy = bool((lp.argmax(-1) == tgt).all())
    return ll, greedy, lp


def _examples(tok, rng, n):
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            ctx = ""  # BOS / EOS path
        elif kind == 1:
            ctx = rng.choice(WORDS)  # may be a single token: no prefix cache
        else:
            ctx = _text(rng, 3, 25) + rng.choice(["", " ", "\n", ":"])
        choices = [_text(rng, 1, rng.choice([1, 3, 9])) for _ in range(rng.randint(1, 6))]
        out.append((ctx, choices, S.encode_example(tok, ctx, choices, rng.choice([" ", "", "\n"]))))
    return out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_shared_context_equals_naive_and_oracle(tiny, dtype):
    """float64: the shared-context path is the same computation (to 1e-9; 5e-6 for BLOOM);
    float32: equal within 1e-5 nats, plus 5e-7 relative for the large
    log-likelihoods (-50 .. -200) of these random-weight models (float32 noise of
    a different matmul shape; SmolLM2 is held to 1e-5 flat in test_scoring_smollm2)."""
    arch, model, tok = tiny
    if dtype == "float64":
        model = copy.deepcopy(model).double()
        # BLOOM computes its attention softmax in float32 even for float64 weights
        tol_ll = atol_row = 5e-6 if arch == "bloom" else 1e-9
        rtol_row = 0.0
    else:
        tol_ll, atol_row, rtol_row = 1e-5, 1e-5, 1e-5
    rng = random.Random(sum(map(ord, arch)))
    for batch_size in (32, 2):
        scorer = S.Scorer(model, tok, batch_size=batch_size, keep_rows=True)
        for ctx, choices, ex in _examples(tok, rng, 12):
            shared = scorer.score(ex)
            naive = scorer.score_naive(ex)
            assert len(shared) == len(naive) == len(choices)
            for cont, a, b in zip(ex.conts, shared, naive):
                ll, greedy, rows = _oracle(model, ex.context_enc, cont)
                tol = tol_ll + (0.0 if dtype == "float64" else 5e-7 * abs(ll))
                assert abs(a.loglik - b.loglik) <= tol, (arch, ctx, cont, a.loglik - b.loglik)
                assert abs(a.loglik - ll) <= tol
                assert abs(b.loglik - ll) <= tol
                assert a.is_greedy == b.is_greedy == greedy
                assert torch.allclose(a.rows, rows, atol=atol_row, rtol=rtol_row), (a.rows - rows).abs().max().item()
                np.testing.assert_array_equal(a.targets, np.array(cont))
                np.testing.assert_allclose(a.logprob, b.logprob, atol=1e-5, rtol=1e-5)
                np.testing.assert_allclose(a.entropy, b.entropy, atol=1e-5, rtol=1e-5)


def test_shared_context_does_less_work(llama):
    model, tok = llama
    rng = random.Random(2)
    exs = [S.encode_example(tok, _text(rng, 30, 40), [_text(rng, 2, 4) for _ in range(4)], " ") for _ in range(5)]
    a, b = S.Scorer(model, tok), S.Scorer(model, tok)
    for ex in exs:
        a.score(ex)
        b.score_naive(ex)
    assert a.n_forward_tokens < 0.6 * b.n_forward_tokens
    assert a.n_forward < b.n_forward


def test_long_input_falls_back_to_lm_eval_truncation(llama):
    model, tok = llama
    scorer = S.Scorer(model, tok, max_length=16)
    rng = random.Random(4)
    ex = S.encode_example(tok, _text(rng, 40, 40), ["a b c", "d"], " ")
    got = scorer.score(ex)
    for cont, g in zip(ex.conts, got):
        seq = (ex.context_enc + cont)[-17:][:-1]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([seq])).logits[0].float(), -1)[-len(cont):]
        ll = lp[torch.arange(len(cont)), torch.tensor(cont)].double().sum().item()
        assert abs(g.loglik - ll) <= 1e-6


def test_empty_continuation_scores_zero(llama):
    model, tok = llama
    ex = S.EncodedExample(tok("hello there", add_special_tokens=False)["input_ids"], [[], [5, 6]])
    got = S.Scorer(model, tok).score(ex)
    assert got[0].loglik == 0.0 and got[0].n_tokens == 0 and got[0].is_greedy
    assert got[1].n_tokens == 2


# ---------------------------------------------------------------------------
# per-token scalars
# ---------------------------------------------------------------------------

def _scalar_oracle(lp: np.ndarray, y: np.ndarray):
    p = np.exp(lp.astype(np.float64))
    ent = scipy.stats.entropy(p, axis=-1)
    tl = lp[np.arange(len(y)), y]
    rank = 1 + (lp > tl[:, None]).sum(-1)
    return tl, ent, lp.max(-1), np.argmax(lp, -1), rank


@pytest.mark.parametrize("case", ["random", "peaked", "flat", "ties", "neginf"])
def test_token_scalars_against_numpy_scipy(case):
    g = torch.Generator().manual_seed(7)
    V = 1000
    logits = torch.randn(9, V, generator=g) * 3
    if case == "peaked":
        logits[:, 17] += 40
    elif case == "flat":
        logits = torch.zeros(9, V)
    elif case == "ties":
        logits = torch.round(logits)  # many exact ties, incl. at the max
        logits[:, 3] = logits.max(-1).values
        logits[:, 900] = logits[:, 3]
    elif case == "neginf":
        logits[:, ::3] = float("-inf")
    lp = torch.log_softmax(logits, -1)
    y = torch.randint(0, V, (9,), generator=g)
    if case == "neginf":
        y[0] = 1  # a finite entry
    s = S.token_scalars(lp, y)
    tl, ent, mx, am, rank = _scalar_oracle(lp.numpy(), y.numpy())
    np.testing.assert_allclose(s["logprob"].numpy(), tl, rtol=0, atol=0)
    np.testing.assert_allclose(s["entropy"].numpy(), ent, atol=2e-5)
    np.testing.assert_array_equal(s["max_logprob"].numpy(), mx)
    np.testing.assert_array_equal(s["argmax"].numpy(), am)  # first maximum
    np.testing.assert_array_equal(s["rank"].numpy(), rank)
    if case == "flat":
        assert np.all(s["rank"].numpy() == 1)
        np.testing.assert_allclose(s["entropy"].numpy(), math.log(V), rtol=1e-6)


# ---------------------------------------------------------------------------
# acc / acc_norm / mc2 (lm-eval conventions)
# ---------------------------------------------------------------------------

def test_tokenizer_fingerprint_changes_with_vocab(llama):
    _, tok = llama
    fp = S.tokenizer_fingerprint(tok, 520)
    assert fp["vocab_size"] == len(tok.get_vocab()) and fp["model_vocab_size"] == 520
    assert fp == S.tokenizer_fingerprint(tok, 520)

    class Other:
        bos_token_id = 1
        eos_token_id = 2

        def get_vocab(self):
            v = dict(tok.get_vocab())
            k = next(iter(v))
            v[k + "x"] = v.pop(k)
            return v

        def __len__(self):
            return len(self.get_vocab())

    assert S.tokenizer_fingerprint(Other(), 520)["vocab_sha256"] != fp["vocab_sha256"]
