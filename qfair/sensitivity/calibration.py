"""Moved: the calibration texts of quantizers that calibrate live in
:mod:`qfair.tasks.calibration_texts`, below the model backends that use them.
This module keeps the old import path working.
"""
from __future__ import annotations

from qfair.tasks.calibration_texts import (  # noqa: F401
    BIAS_TASKS,
    GENERIC_TASKS,
    KINDS,
    CalibrationError,
    CalibrationSet,
    bias_balanced_texts,
    calibration_set,
    file_texts,
    generic_texts,
)
