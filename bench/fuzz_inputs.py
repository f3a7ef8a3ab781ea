"""The long run of the input fuzzers (tests/fuzz_inputs.py): damaged dumps through
``qfair analyze`` (and every tenth successful one through ``qfair report``),
arbitrary arrays through ``qfair.divergence`` / ``stream_divergence``, hostile
study files, damaged lm-eval sample lines and damaged ``.kld`` rows.

The property checked for every case: the input is either refused with exit
status 1 and one line (a one-line ValueError in the library), or it succeeds
with results that are right (non-finite rows counted and left out, KL against
a float64 oracle, every interval and p-value where it belongs). ``make test``
runs a budget of a few seconds (tests/test_fuzz.py); this runs the long one
with fresh random draws and prints how many cases were tried.

    .venv/bin/python bench/fuzz_inputs.py --dump-cases 2000 --divergence-cases 5000
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump-cases", type=int, default=1000)
    ap.add_argument("--divergence-cases", type=int, default=3000)
    ap.add_argument("--study-cases", type=int, default=3000, help="hostile study files (0: skip)")
    ap.add_argument("--lm-eval-cases", type=int, default=400, help="damaged lm-eval sample lines (0: skip)")
    ap.add_argument("--kld-cases", type=int, default=3000, help="damaged .kld rows (0: skip)")
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fuzz_inputs.json"))
    args = ap.parse_args(argv)

    from fuzz_inputs import (
        CASES,
        fuzz_divergence,
        fuzz_dumps_with_report,
        fuzz_kld_rows,
        fuzz_lm_eval_lines,
        fuzz_study_files,
    )
    from hypothesis import HealthCheck, Phase, seed, settings

    def run(fn, n):
        if n <= 0:
            return 0.0
        s = settings(max_examples=n, deadline=None, database=None,
                     phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                     suppress_health_check=list(HealthCheck))
        f = s(fn)
        if args.seed is not None:
            f = seed(args.seed)(f)
        t = time.perf_counter()
        f()
        return time.perf_counter() - t

    load = os.getloadavg()
    t_div = run(fuzz_divergence, args.divergence_cases)
    t_dump = run(fuzz_dumps_with_report, args.dump_cases)
    t_study = run(fuzz_study_files, args.study_cases)
    t_lm = run(fuzz_lm_eval_lines, args.lm_eval_cases)
    t_kld = run(fuzz_kld_rows, args.kld_cases)
    res = {"dump_cases": CASES["dump"], "report_cases": CASES["report"], "divergence_cases": CASES["divergence"],
           "study_cases": CASES["study"], "lm_eval_cases": CASES["lm_eval"], "kld_cases": CASES["kld"],
           "seconds_dump": round(t_dump, 1), "seconds_divergence": round(t_div, 1),
           "seconds_study": round(t_study, 1), "seconds_lm_eval": round(t_lm, 1), "seconds_kld": round(t_kld, 1),
           "outcomes": dict(sorted(CASES["outcomes"].items())),
           "load_before": load, "load_after": os.getloadavg(), "failures": 0}
    print(json.dumps(res, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
