# Type stubs for the compiled extension qfair._core (hand-written; keep in
# step with cpp/bindings/). The public, documented API is qfair.divergence and
# friends; these are the raw bindings underneath.
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

# ---- divergence core (cpp/bindings/bind_divergence.cpp) -------------------

def divergence(
    p: npt.NDArray[Any],
    q: npt.NDArray[Any],
    targets: npt.NDArray[np.integer[Any]] | None = None,
    topk: Sequence[int] = (1, 5, 10),
    threads: int = 0,
    dtype: str = "",
) -> dict[str, Any]:
    """{'metrics': {name: ndarray}, 'invalid_p': int, 'invalid_q': int, 'invalid_rows': int}"""

def distribution_stats(
    p: npt.NDArray[Any],
    targets: npt.NDArray[np.integer[Any]] | None = None,
    threads: int = 0,
    dtype: str = "",
) -> dict[str, Any]:
    """{'metrics': {name: ndarray}, 'invalid_rows': int}"""

def active_isa() -> str: ...
def select_isa(cap: str) -> str: ...

# ---- statistics (cpp/bindings/bind_stats.cpp) ------------------------------
