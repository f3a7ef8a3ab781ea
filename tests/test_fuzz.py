"""A short run of the input fuzzers (tests/fuzz_inputs.py): damaged dumps through
``qfair analyze``, arbitrary arrays through ``qfair.divergence`` /
``stream_divergence``, hostile study files, lm-eval sample lines and ``.kld``
rows. A few seconds here; bench/fuzz_inputs.py runs the long budget.

``QFAIR_FUZZ_EXAMPLES=N`` (unset by default) runs each fuzzer here on N fresh
random examples instead, for a one-off long run."""
from __future__ import annotations

import os

import pytest

hypothesis = pytest.importorskip("hypothesis")

from fuzz_inputs import (  # noqa: E402
    fuzz_divergence,
    fuzz_dumps,
    fuzz_kld_rows,
    fuzz_lm_eval_lines,
    fuzz_study_files,
)
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]  # a failure is reported as drawn (shrinking takes minutes)
LONG = int(os.environ.get("QFAIR_FUZZ_EXAMPLES", "0"))  # a one-off long run: N examples each, fresh draws


def _budget(n: int) -> settings:
    return settings(max_examples=LONG or n, deadline=None, derandomize=not LONG, database=None, phases=NO_SHRINK,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


test_damaged_dumps_are_refused_or_analyzed_right = _budget(10)(fuzz_dumps)
test_divergence_inputs_are_refused_or_computed_right = _budget(80)(fuzz_divergence)
test_study_files_are_refused_or_stay_inside_out = _budget(60)(fuzz_study_files)
test_lm_eval_lines_are_refused_or_match_lm_evals_results = _budget(12)(fuzz_lm_eval_lines)
test_kld_rows_are_refused_by_row_or_are_log_probabilities = _budget(60)(fuzz_kld_rows)
