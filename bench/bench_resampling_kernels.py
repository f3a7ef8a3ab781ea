"""The core's resampling statistics on the shapes of a large `qfair analyze` (4,000 examples
of 10 token rows): two builds of the extension timed in the same run, each call in its own
subprocess, the builds alternating (A B A B ...), medians of the repeats. Every call's
output is digested and the two builds must agree bit for bit.

    nice -n 10 .venv/bin/python bench/bench_resampling_kernels.py --baseline /path/to/old/_core.so

--baseline is another build's _core*.so (e.g. main's; one that reads uint16 counts in
weighted_spearman); the candidate defaults to this checkout's build.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _load(path: str):
    loader = importlib.machinery.ExtensionFileLoader("_core", path)
    spec = importlib.util.spec_from_file_location("_core", path, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def _order_and_ends(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(v, kind="stable")
    vs = v[order]
    last = np.flatnonzero(np.r_[vs[1:] != vs[:-1], True])
    return order.astype(np.int64), np.repeat(last, np.diff(np.r_[-1, last])).astype(np.int64)


def _cases(threads: int):
    """name -> (function name, arguments): the profile's shapes, token values with some ties."""
    rng = np.random.default_rng(0)
    ex, per = 4000, 10
    clusters = np.repeat(np.arange(ex), per).astype(np.int64)
    n = clusters.size
    # the kept draw's uint16 rows, as the analysis passes them (blocks of 500 resamples)
    counts = np.stack([np.bincount(rng.integers(0, ex, ex), minlength=ex) for _ in range(500)]).astype(np.uint16)
    x = rng.gamma(2.0, 1.0, n).round(2)                       # an entropy-like score, some ties
    ys = [x + rng.normal(size=n), rng.integers(0, 5, n).astype(float), rng.normal(size=n).round(1)]
    xo, xe = _order_and_ends(x)
    yo = np.ascontiguousarray(np.stack([_order_and_ends(v)[0] for v in ys]))
    ye = np.ascontiguousarray(np.stack([_order_and_ends(v)[1] for v in ys]))
    xs = rng.normal(size=ex).round(2)
    ys5 = [xs + rng.normal(size=ex) for _ in range(4)] + [rng.integers(0, 2, ex).astype(float)]
    xso, xse = _order_and_ends(xs)
    yso = np.ascontiguousarray(np.stack([_order_and_ends(v)[0] for v in ys5]))
    yse = np.ascontiguousarray(np.stack([_order_and_ends(v)[1] for v in ys5]))
    a, b = rng.normal(size=ex), rng.normal(size=ex)
    # the summary's bootstrap: 22 means and 14 calibration statistics over the examples (their
    # ECE, MCE, RMS and debiased L2 with 15 equal-width bins: the difference and each model's;
    # the ECE with equal-mass bins of each model), and the 36 means of a task without correctness
    conf_b, conf_q = rng.beta(5, 2, ex), rng.beta(5, 2, ex)
    corr_b = (rng.random(ex) < conf_b).astype(float)
    corr_q = (rng.random(ex) < conf_q).astype(float)
    means = [{"kind": "mean", "x": rng.normal(size=ex), "y": rng.normal(size=ex)} for _ in range(22)]
    cal = []
    for measure in ("ece", "mce", "rms", "l2_debiased"):
        cal.append({"kind": "calibration", "conf_y": conf_q, "correct_y": corr_q, "conf_x": conf_b, "correct_x": corr_b,
                    "bins": 15, "binning": "width", "measure": measure})
        for c_, a_ in ((conf_b, corr_b), (conf_q, corr_q)):
            cal.append({"kind": "calibration", "conf_y": c_, "correct_y": a_, "bins": 15, "binning": "width",
                        "measure": measure})
    for c_, a_ in ((conf_b, corr_b), (conf_q, corr_q)):
        cal.append({"kind": "calibration", "conf_y": c_, "correct_y": a_, "bins": 15, "binning": "mass",
                    "measure": "ece"})
    means36 = [{"kind": "mean", "x": rng.normal(size=ex), "y": rng.normal(size=ex)} for _ in range(36)]
    boot = {"resamples": 10000, "seed": 5, "confidence": 0.95, "threads": threads, "keep_distribution": True}
    return {
        "paired_bootstrap 22 means + 14 calibration n=4000": ("paired_bootstrap", (means + cal,), boot),
        "paired_bootstrap 36 means n=4000": ("paired_bootstrap", (means36,), boot),
        "weighted_dots 500x4000 u16, 12 columns": ("weighted_dots", (counts, np.ascontiguousarray(
            rng.normal(size=(12, ex))), threads), {}),
        "weighted_spearman clusters (500x4000 u16 -> 40000, k=3)":
            ("weighted_spearman", (counts, clusters, xo, xe, yo, ye, threads), {}),
        "weighted_spearman plain (500x4000 u16, k=5)":
            ("weighted_spearman", (counts, None, xso, xse, yso, yse, threads), {}),
        "sign_flip_test n=4000 B=10000": ("sign_flip_test", (rng.normal(0.01, 1, ex), 10000, 3, threads), {}),
        "sign_flip_test n=1333 B=10000": ("sign_flip_test", (rng.normal(0.01, 1, 1333), 10000, 3, threads), {}),
        "pairings_dot n=4000 B=10000": ("pairings_dot", (a - a.mean(), b - b.mean(), 10000, 5, threads), {}),
        "pairings_dot n=4000 B=10000, 5 rows of b": ("pairings_dot", (a - a.mean(), np.ascontiguousarray(
            rng.normal(size=(5, ex))), 10000, 5, threads), {}),
        "subset_sums n=1594 k=780 B=10000": ("subset_sums", (rng.normal(size=1594), 780, 10000, 7, threads), {}),
    }


def _child(so: str, threads: int) -> None:
    core = _load(so)
    out = {}
    for name, (fn, args, kwargs) in _cases(threads).items():
        t0 = time.perf_counter()
        res = getattr(core, fn)(*args, **kwargs)
        dt = time.perf_counter() - t0
        if isinstance(res, np.ndarray):
            blob = np.ascontiguousarray(res).tobytes()
        elif isinstance(res, list):  # the bootstrap: every statistic's fields, its distribution included
            blob = b"".join(np.ascontiguousarray(v).tobytes() if isinstance(v, np.ndarray) else repr(v).encode()
                            for r in res for _, v in sorted(r.items()))
        else:
            blob = repr(sorted(res.items())).encode()
        out[name] = (dt, hashlib.blake2b(blob, digest_size=8).hexdigest())
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="the other build's _core*.so")
    ap.add_argument("--candidate", default=None, help="this build's _core*.so (default: qfair/_core*.so here)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.threads)
        return
    # this checkout's build: next to the sources, or where an editable install put it
    here = sorted(glob.glob(os.path.join(ROOT, "qfair", "_core*.so")))
    cand = args.candidate or (here[0] if here else importlib.util.find_spec("qfair._core").origin)
    builds = {"baseline": args.baseline, "candidate": cand}
    times: dict[str, dict[str, list[float]]] = {b: {} for b in builds}
    digests: dict[str, dict[str, str]] = {b: {} for b in builds}
    for _ in range(args.repeats):
        for b, so in builds.items():
            cmd = [sys.executable, __file__, "--baseline", args.baseline, "--child", so, "--threads", str(args.threads)]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            for name, (dt, dig) in res.items():
                times[b].setdefault(name, []).append(dt)
                if digests[b].setdefault(name, dig) != dig:
                    raise SystemExit(f"{b}: {name} gave different outputs in two runs")
    print(f"threads={args.threads}, median of {args.repeats}, load average {os.getloadavg()[0]:.2f}")
    print(f"{'call':52s} {'baseline s':>10s} {'candidate s':>11s} {'ratio':>6s}  same bits")
    for name in times["baseline"]:
        a, c = statistics.median(times["baseline"][name]), statistics.median(times["candidate"][name])
        same = digests["baseline"][name] == digests["candidate"][name]
        print(f"{name:52s} {a:10.4f} {c:11.4f} {a / c:6.2f}  {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
