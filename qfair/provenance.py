"""What produced a file: library versions (one list for the whole project)."""
from __future__ import annotations

import sys
from importlib import metadata

# distribution -> module whose presence in sys.modules means "imported in this process"
LIBRARIES: dict[str, str] = {
    "torch": "torch",
    "transformers": "transformers",
    "tokenizers": "tokenizers",
    "accelerate": "accelerate",
    "safetensors": "safetensors",
    "gguf": "gguf",
    "bitsandbytes": "bitsandbytes",
    "optimum-quanto": "optimum.quanto",
    "torchao": "torchao",
    "llmcompressor": "llmcompressor",
    "compressed-tensors": "compressed_tensors",
    "numpy": "numpy",
    "polars": "polars",
    "pyarrow": "pyarrow",
}


def library_versions(*, imported_only: bool = False) -> dict[str, str | None]:
    """``{"python": ..., "qfair": ..., dist: version}``.

    ``imported_only=True`` lists only the libraries imported in this process
    (what actually ran, for a model's record); otherwise every library of
    :data:`LIBRARIES`, ``None`` where it is not installed.
    """
    from qfair import __version__

    out: dict[str, str | None] = {"python": sys.version.split()[0], "qfair": __version__}
    for dist, module in LIBRARIES.items():
        if imported_only and module not in sys.modules:
            continue
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if not imported_only:
                out[dist] = None
    return out
