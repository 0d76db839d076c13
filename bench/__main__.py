"""``python -m bench`` (``make bench``): run the suites, print one table per suite, write bench/results/<time>.json.

    python -m bench                      # every suite: 5 s per case after 1 s of warm-up, 3 repeats, medians
    python -m bench --quick              # 2 s per case, 1 repeat
    python -m bench --suite queue_proxy  # one suite: direct, queue-proxy and nginx at 1, 16 and 64
    python -m bench --suite stack        # servelane up examples/: each hop against the predictor alone, at 1 and 16
    python -m bench --case 'iris-*' --case '4mb-*' --duration 10 --repeats 5
    python -m bench --list               # the case keys, without running anything
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from bench import harness, loadgen
from bench import model_server as model_server_suite
from bench import pipeline as pipeline_suite
from bench import queue_proxy as queue_proxy_suite
from bench import stack as stack_suite
from bench.harness import Options

# name -> module with KEYS and ``async run(options, wrk)``
SUITES = {
    "model_server": model_server_suite, "pipeline": pipeline_suite, "queue_proxy": queue_proxy_suite,
    "stack": stack_suite,
}


def parse_args(argv: list[str]) -> tuple[Options, list[str], bool]:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 s per case, 1 repeat (unless given explicitly)")
    p.add_argument("--duration", type=float, help="seconds per measured phase (default 5; wrk rounds to whole s)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up before each phase (default 1)")
    p.add_argument("--repeats", type=int, help="runs of every case; medians are reported (default 3)")
    p.add_argument("--case", action="append", default=[], metavar="PATTERN",
                   help="run only cases whose key (name@cN) matches this glob; repeatable")
    p.add_argument("--suite", action="append", choices=sorted(SUITES), help="run only this suite; repeatable")
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                   help="HTTP load generator: wrk (installed with apt-get when missing and possible), the Python "
                        "one, or auto: wrk when it can be had")
    p.add_argument("--list", action="store_true", help="print the case keys and exit")
    args = p.parse_args(argv)
    duration = args.duration if args.duration is not None else (2.0 if args.quick else 5.0)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if duration <= 0 or repeats < 1 or args.warmup < 0:
        p.error("--duration must be positive, --repeats at least 1, --warmup not negative")
    options = Options(duration, args.warmup, repeats, tuple(args.case), args.loadgen)
    return options, args.suite or sorted(SUITES), args.list


async def main_async(options: Options, suites: list[str]) -> int:
    started = time.time()
    wrk = None if options.loadgen == "python" else loadgen.find_wrk(install=True)
    if options.loadgen == "wrk" and wrk is None:
        print("bench: wrk is not installed and could not be installed", file=sys.stderr)
        return 2
    if wrk is None and options.loadgen == "auto":
        print("bench: wrk not available; HTTP cases use the Python load generator", file=sys.stderr)
    results = []
    for name in suites:
        result = await SUITES[name].run(options, wrk)
        results.append(result)
        print(harness.format_table(result) + "\n", flush=True)
    path = harness.write_json(results, options, started)
    errors = sum(m.errors for r in results for m in r.medians)
    print(f"wall time {time.time() - started:.0f} s; results in {path}" + (f"; {errors} ERRORS" if errors else ""))
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    options, suites, list_only = parse_args(sys.argv[1:] if argv is None else argv)
    suites = [name for name in suites if any(options.selects(key) for key in SUITES[name].KEYS)]
    if not suites:
        print(f"bench: no case matches {' '.join(options.patterns)}; see --list", file=sys.stderr)
        return 2
    if list_only:
        for name in suites:
            print("\n".join(f"{name}: {key}" for key in SUITES[name].KEYS if options.selects(key)))
        return 0
    return asyncio.run(main_async(options, suites))


if __name__ == "__main__":
    sys.exit(main())
