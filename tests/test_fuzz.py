"""A short run of the input fuzzers (tests/fuzz_inputs.py): damaged dumps through
``qfair analyze``, and arbitrary arrays through ``qfair.divergence`` /
``stream_divergence``. A few seconds here; bench/fuzz_inputs.py runs the long budget."""
from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis")

from fuzz_inputs import fuzz_divergence, fuzz_dumps  # noqa: E402
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]  # a failure is reported as drawn (shrinking takes minutes)

FAST = settings(max_examples=10, deadline=None, derandomize=True, database=None, phases=NO_SHRINK,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

test_damaged_dumps_are_refused_or_analyzed_right = FAST(fuzz_dumps)
test_divergence_inputs_are_refused_or_computed_right = settings(FAST, max_examples=80)(fuzz_divergence)
