"""Weight quantizers that qfair makes itself, in torch (docs/compress.md).

- :mod:`~qfair.compress.grid`: the integer grid (bits, groups, sym) and packing;
- :mod:`~qfair.compress.quantized`: a quantized weight (codes, scales, zeros);
- :mod:`~qfair.compress.rtn`: round to nearest;
- :mod:`~qfair.compress.hessian`: the layer Hessian, dampening, inverse Cholesky;
- :mod:`~qfair.compress.solver`: the sequential column solver with lazy block
  updates (shared by GPTQ and future pruners such as SparseGPT);
- :mod:`~qfair.compress.gptq`: GPTQ on one layer;
- :mod:`~qfair.compress.capture`: calibration capture, block by block, on the
  already-quantized outputs of earlier blocks;
- :mod:`~qfair.compress.fair`: the fairness term from paired sentences;
- :mod:`~qfair.compress.model`: quantizing every linear layer of a model;
- :mod:`~qfair.compress.checkpoint`: the saved form (float checkpoint + codes);
- :mod:`~qfair.compress.export`: the compressed-tensors ``pack-quantized``
  checkpoint transformers reloads as a quantized model;
- :mod:`~qfair.compress.errors`: the package's error class.

This package knows torch and transformers models only: the calibration texts
and probe pairs are chosen by the caller (the ``rtn``/``gptq`` specs).
"""
