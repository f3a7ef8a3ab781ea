"""optimum-quanto: int8 / int4 / int2 weights, quantized on load."""
from __future__ import annotations

from qfair.models.backends import register_backend
from qfair.models.backends.base import SKIP_MODULES, QuantBackend, SpecDef


@register_backend
class Quanto(QuantBackend):
    name = "quanto"
    distribution = "optimum-quanto"
    module = "optimum.quanto"
    loggers = ("optimum.quanto",)
    specs = (
        SpecDef("quanto-int8", "optimum-quanto int8 weights", {"skip_modules": SKIP_MODULES}),
        SpecDef("quanto-int4", "optimum-quanto int4 weights (group size 128)", {"skip_modules": SKIP_MODULES}),
        SpecDef("quanto-int2", "optimum-quanto int2 weights", {"skip_modules": SKIP_MODULES}),
    )

    def to_config(self, spec):
        from transformers import QuantoConfig

        skip = list(spec.options["skip_modules"]) if spec.options.get("skip_modules") else None
        return QuantoConfig(weights=spec.name.split("-")[1], modules_to_not_convert=skip)
