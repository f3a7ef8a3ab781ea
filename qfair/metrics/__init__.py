"""What is measured on a task's examples, below every layer that uses it.

- :mod:`.example_metrics`: the per-example metrics (accuracy, p_gold, NLL,
  Brier, choice entropy, ...), one registry entry each;
- :mod:`.task_kinds`: how each kind of task is scored and what it headlines;
- :mod:`.examples`: one model's per-example statistics from a dump's choices;
- :mod:`.bias`: the bias benchmarks' set-level scores, their intervals and tests.

The dump's summary (the headline metrics printed when a dump is written), the
analysis, the importers, the sensitivity scan and the report all read these
definitions; they import nothing above :mod:`qfair.stats`. The modules were
``qfair.analyze.metrics``, ``qfair.analyze.task_kinds``,
``qfair.analyze.examples`` and ``qfair.analyze.bias``; those names still import.
"""
