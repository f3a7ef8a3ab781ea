"""Tiny random-weight causal language models for tests and demos, fully offline.

``make_tiny_model(arch, path, seed=0)`` builds a two-layer model of one of the
supported architectures (``llama``, ``mistral``, ``bloom``, ``opt``) from its
transformers config class, initialises it from ``seed``, and saves it with
``save_pretrained`` (safetensors) together with a small byte-level BPE
tokenizer, so that ``load_model(path)`` works with no network at all.

The tokenizer is trained (deterministically, in milliseconds) on a short
original corpus embedded below; every byte is in its alphabet, so any text
encodes without ``<unk>``.  Special tokens: ``<unk>``=0, ``<s>``=1, ``</s>``=2,
``<pad>``=3.  The per-architecture conventions mirror the real families, which
makes the tiny models useful adversarial cases for scoring code:

========  ===========================  ===============  =========================
arch      BOS added by the tokenizer   tied embeddings  logit width
========  ===========================  ===============  =========================
llama     ``<s>``                      no               = len(tokenizer)
mistral   ``<s>``                      no               = len(tokenizer)
bloom     none                         yes              = len(tokenizer)
opt       ``</s>`` (as OPT does)       yes              len(tokenizer) + 8 (padded,
                                                        as OPT pads 50265 → 50272)
========  ===========================  ===============  =========================

Weights are drawn with a larger initialiser range than the library default so
that the output distributions are far from uniform (quantization then has a
visible effect even on a model this small).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

ARCHITECTURES = ("llama", "mistral", "bloom", "opt")

TOKENIZER_VOCAB_SIZE = 512
_OPT_PAD_EXTRA = 8
_HIDDEN = 128
_FFN = 256
_LAYERS = 2
_HEADS = 4
_KV_HEADS = 2
_INIT_RANGE = 0.2
_MAX_POS = 512

# An original training corpus (written for qfair; not taken from any dataset).
_CORPUS = """\
The river keeps its own calendar, rising in spring and falling by late summer.
A careful baker weighs the flour twice and trusts the oven thermometer once.
When the train is late, the station clock looks slower than it really is.
Children in the valley learn three languages before they learn to swim.
She said the answer was seven, but the table of results says otherwise.
Quantized weights store fewer bits, and the model still has to guess the next word.
He opened the window; the smell of rain and cut grass came into the kitchen.
Which of these is heavier: a kilogram of feathers or a kilogram of iron?
Neither. They weigh the same, although the feathers take much more room.
The committee met on Tuesday, argued until noon, and agreed on nothing at all.
Numbers such as 3.14, 2718 and 1,000,000 appear in many ordinary sentences.
Le chat dort sur la chaise. El perro corre en el parque. Der Hund schläft.
A nurse, an engineer, a teacher and a farmer shared a table at the market.
Good evidence is repeatable: measure twice, write down both, compare honestly.
Questions end with a question mark? Statements end with a full stop.
"Quote me," the editor said, "but only if you spell my name correctly."
Tabs\tand newlines\nare characters too, and so are emoji like 🙂 and ü, é, ñ.
"""

_ARCH_EXTRA = {
    # arch: (bos token text or None, tie embeddings)
    "llama": ("<s>", False),
    "mistral": ("<s>", False),
    "bloom": (None, True),
    "opt": ("</s>", True),
}


def _build_tokenizer(arch: str):
    """A byte-level BPE tokenizer (``PreTrainedTokenizerFast``) for ``arch``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    bos, _ = _ARCH_EXTRA[arch]
    if bos is not None:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token=bos if bos is not None else "<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=_MAX_POS,
        clean_up_tokenization_spaces=False,
    )


def _build_config(arch: str, vocab_size: int, bos_id: int, eos_id: int, pad_id: int, layers: int = _LAYERS):
    import transformers as tf

    _, tie = _ARCH_EXTRA[arch]
    common = dict(
        vocab_size=vocab_size,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=tie,
    )
    if arch == "llama":
        return tf.LlamaConfig(
            hidden_size=_HIDDEN, intermediate_size=_FFN, num_hidden_layers=layers,
            num_attention_heads=_HEADS, num_key_value_heads=_KV_HEADS,
            max_position_embeddings=_MAX_POS, initializer_range=_INIT_RANGE, **common,
        )
    if arch == "mistral":
        return tf.MistralConfig(
            hidden_size=_HIDDEN, intermediate_size=_FFN, num_hidden_layers=layers,
            num_attention_heads=_HEADS, num_key_value_heads=_KV_HEADS,
            max_position_embeddings=_MAX_POS, sliding_window=_MAX_POS,
            initializer_range=_INIT_RANGE, **common,
        )
    if arch == "bloom":
        return tf.BloomConfig(
            hidden_size=_HIDDEN, n_layer=layers, n_head=_HEADS,
            initializer_range=_INIT_RANGE, **common,
        )
    if arch == "opt":
        return tf.OPTConfig(
            hidden_size=_HIDDEN, ffn_dim=_FFN, num_hidden_layers=layers,
            num_attention_heads=_HEADS, max_position_embeddings=_MAX_POS,
            word_embed_proj_dim=_HIDDEN, init_std=_INIT_RANGE, dropout=0.0, **common,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")


def make_tiny_model(arch: str, path: str | os.PathLike, seed: int = 0, layers: int = _LAYERS) -> Path:
    """Build a tiny random-weight ``arch`` model and save it (with its tokenizer) to ``path``.

    ``arch`` is one of ``llama``, ``mistral``, ``bloom``, ``opt``.  The result is
    deterministic for a given ``seed`` and library version; ``layers`` sets the
    number of transformer blocks (default two).  ``path`` is written
    atomically (built in a sibling temporary directory, then renamed); an
    existing directory at ``path`` is replaced.  Returns ``path`` as a ``Path``.
    """
    arch = arch.lower()
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(arch)
    n_tok = len(tokenizer)
    vocab = n_tok + (_OPT_PAD_EXTRA if arch == "opt" else 0)
    bos_text, _ = _ARCH_EXTRA[arch]
    bos_id = tokenizer.convert_tokens_to_ids(bos_text or "<s>")
    config = _build_config(
        arch, vocab, bos_id=bos_id, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
        layers=layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()

    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "qfair_tiny.json").write_text(
            json.dumps({"arch": arch, "seed": seed, "tokenizer_size": n_tok, "vocab_size": vocab}, indent=2)
        )
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
