"""Generation: what quantization does to the text a model writes.

``qfair dump --tasks gen_stories`` generates a continuation of every prompt
(greedy, or sampled with per-(prompt, sample) seeds), storing for every
generated position the vocabulary-wide log-prob row and the target-token
scalars; with ``--reference BASE_DUMP`` a quantized model is also
teacher-forced on the base model's continuations, so that its rows align key
by key with the base rows. ``qfair analyze`` then compares the two along the
base text (KL by position, perplexity, entropy-KL correlation) and between the
two free texts (first divergence, edit distance, chrF, diversity, language
drift, bias lexicons and classifiers per group).

Modules: the prompts (the task kind and built-in prompt sets) are task
definitions in :mod:`qfair.tasks.prompts`;
:mod:`.decode` (batched, left-padded KV-cache decoding), :mod:`.teacher`
(teacher forcing), :mod:`.producer` (the dump), :mod:`.kind` (its tables),
:mod:`.textmetrics`, :mod:`.lexicon`, :mod:`.language`, :mod:`.scorer`,
:mod:`.analysis`. Nothing here imports torch at module import time.
"""
from __future__ import annotations

from qfair.tasks.prompts import GENERATION_TASK_KIND  # the task kind of prompt-only tasks

__all__ = ["GENERATION_TASK_KIND"]
