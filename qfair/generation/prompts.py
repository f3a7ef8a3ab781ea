"""Moved: generation tasks' prompts are task definitions and live in
:mod:`qfair.tasks.prompts` (their specs in
:func:`qfair.tasks.registry.generation_task_specs`). This module keeps the old
import path working.
"""
from __future__ import annotations

from qfair.tasks.prompts import (  # noqa: F401
    BIAS_AXES,
    BIAS_LANGS,
    BIAS_TEMPLATES,
    GENERATION_TASK_KIND,
    PROMPT_FIELDS,
    STORY_LANGS,
    STORY_TEMPLATES,
    bias_probe_rows,
    generation_prompt,
    story_rows,
)
from qfair.tasks.registry import generation_task_specs  # noqa: F401

__all__ = ["generation_prompt", "generation_task_specs", "bias_probe_rows", "story_rows", "BIAS_AXES",
           "PROMPT_FIELDS"]
