"""Where quantization's bias comes from, and quantizing around it.

- :func:`run_scan` (``qfair sensitivity``): quantize one unit at a time (a
  transformer block or a linear layer) by putting the backend's own quantized
  modules into the float model, and measure the bias metrics, the token KL and
  the accuracy change against the base, with bootstrap intervals;
- :func:`recommend` (``qfair recommend``): from a scan, the units to keep in
  higher precision under a memory budget, as a spec ``qfair dump --quant``
  accepts, validated on the held-out side of the probes; from a scan with
  candidate widths, one bit width per linear layer instead
  (:mod:`qfair.sensitivity.allocate`).

``qfair debias-eval``, which dumps candidate quantizers and judges them with
``qfair analyze``, sits above this package and the analysis: :mod:`qfair.debias_eval`.

Importing this package imports neither torch nor transformers.
"""
from __future__ import annotations

from qfair.sensitivity.probes import ProbeError, Split
from qfair.sensitivity.scan import SensitivityError, read_scan, run_scan

__all__ = ["run_scan", "read_scan", "SensitivityError", "ProbeError", "Split"]
