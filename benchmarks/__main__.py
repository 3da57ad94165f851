"""``python -m benchmarks SUITE [--device auto|host|cuda] [--quick] [--out DIR]``

SUITE: workloads, overhead, contention, scale, store_io, placement, or all
(workloads, overhead, contention, scale, in that order). Each suite writes
``<suite>-<device>[-quick].json`` (and PNG plots) under benchmarks/results/,
or under ``--out`` / ``$KAAS_BENCH_RESULTS``. Exit status 1 when a suite
computes a wrong result (``WrongResult``) or fails in any other way, else 0.
store_io and placement keep their own CLIs (``python -m benchmarks.store_io``);
here they get ``--quick`` mapped and ignore ``--device`` (host only).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback

SUITES = ("workloads", "overhead", "contention", "scale", "store_io", "placement")
ALL = ("workloads", "overhead", "contention", "scale")


def run_suite(name: str, device: str, quick: bool) -> dict:
    """Import the suite lazily (contention/scale may be written later) and run it."""
    module = importlib.import_module(f"benchmarks.{name}")
    if name in ("store_io", "placement"):
        from benchmarks.common import results_dir

        code = module.main(["--quick"] if quick else [])
        if code:
            raise RuntimeError(f"{name}.main returned {code}")
        default = {"store_io": "store_io", "placement": "placement_quick" if quick else "placement"}[name]
        with open(os.path.join(results_dir(), f"{default}.json")) as f:
            return json.load(f)
    return module.run(device, quick)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", choices=(*SUITES, "all"))
    parser.add_argument("--device", choices=("auto", "host", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (CI)")
    parser.add_argument("--out", default=None, help="results directory (default benchmarks/results; "
                                                    "also $KAAS_BENCH_RESULTS)")
    args = parser.parse_args(argv)
    if args.out:
        os.environ["KAAS_BENCH_RESULTS"] = os.path.abspath(args.out)
    from benchmarks.common import WrongResult, resolve_device

    try:
        device = resolve_device(args.device)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    suites = ALL if args.suite == "all" else (args.suite,)
    status, summary = 0, []
    for name in suites:
        print(f"== {name} ({device}{', quick' if args.quick else ''})", flush=True)
        start = time.perf_counter()
        try:
            payload = run_suite(name, device, args.quick)
        except WrongResult as e:
            status = 1
            summary.append(f"{name}: WRONG RESULT ({e}) after {time.perf_counter() - start:.1f}s")
        except Exception as e:  # any failure fails the run; the others still run
            traceback.print_exc()
            status = 1
            summary.append(f"{name}: FAILED ({type(e).__name__}: {e}) after {time.perf_counter() - start:.1f}s")
        else:
            path = payload.get("path") if isinstance(payload, dict) else None
            summary.append(f"{name}: ok in {time.perf_counter() - start:.1f}s" + (f" -> {path}" if path else ""))
        print(summary[-1], flush=True)
    print("\n".join(["== summary", *summary]))
    return status


if __name__ == "__main__":
    sys.exit(main())
