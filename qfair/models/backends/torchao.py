"""torchao: int8 weight-only (CPU and CUDA) and int4 weight-only (CUDA)."""
from __future__ import annotations

from qfair.models.backends import base, register_backend
from qfair.models.backends.base import SKIP_MODULES, Option, QuantBackend, SpecDef, parse_choice


@register_backend
class TorchAO(QuantBackend):
    name = "torchao"
    distribution = "torchao"
    module = "torchao"
    loggers = ("torchao", "torch.utils._pytree")
    specs = (
        SpecDef("torchao-int8wo", "torchao int8 weight-only (per-row scales)", {"skip_modules": SKIP_MODULES}),
        SpecDef("torchao-int4wo", "torchao int4 weight-only (tinygemm layout; CUDA, bfloat16)",
                {"group_size": Option(parse_choice(32, 64, 128, 256), 128, "weights per scale: 32|64|128|256"),
                 "skip_modules": SKIP_MODULES}),
    )

    def availability(self, spec: str, cuda: bool) -> tuple[bool, str]:
        v = base.dist_version("torchao")
        if v is not None and spec == "torchao-int4wo" and not cuda:
            return False, f"torchao {v} int4 weight-only kernels need CUDA (no CPU layout works here)"
        return super().availability(spec, cuda)

    def to_config(self, spec):
        from qfair.models.quant import quiet_imports

        with quiet_imports():
            from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
            from transformers import TorchAoConfig
        skip = list(spec.options["skip_modules"]) if spec.options.get("skip_modules") else None
        if spec.name == "torchao-int8wo":
            base = Int8WeightOnlyConfig()
        else:
            base = Int4WeightOnlyConfig(group_size=int(spec.options["group_size"]),
                                        int4_packing_format="tile_packed_to_4d")
        return TorchAoConfig(base, modules_to_not_convert=skip)
