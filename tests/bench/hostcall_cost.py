"""What each hostcall metricpact makes per request costs in Envoy, measured side by side.

Envoys identical but for their HTTP filter (one worker each, pinned to one CPU, proxying to the
direct-response upstream like tests/bench/cpu_per_request.py): the empty filter, and the hostcall
probe (tests/bench/hostcall-filter) making one kind of hostcall N times per request. Per round,
(the probe's CPU/request - the empty filter's) / N is the cost of one call; reported: the median
over the rounds. Then the sum for the calls metricpact makes per request with the default
contract (2 clock reads, the request header map, the `request.protocol` property, `:status`,
counter +1, histogram record, active gauge +1 and -1).

usage: .venv/bin/python tests/bench/hostcall_cost.py [--rounds 3] [--seconds 3] [--calls 50]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import benchlib
import cpu_per_request
from benchlib import harness, median

OPERATIONS = ["clock", "headers", "header", "property", "counter", "gauge", "histogram"]
# How many of each metricpact makes per request with the default contract (`header` is `:status`).
PER_REQUEST = {"clock": 2, "headers": 1, "header": 1, "property": 1, "counter": 1, "gauge": 2, "histogram": 1}
DESCRIPTION = {
    "clock": "clock read (`proxy_get_current_time_nanoseconds`)",
    "headers": "request header map (`proxy_get_header_map_pairs`)",
    "header": "one header (`proxy_get_header_map_value`)",
    "property": "property `request.protocol` (`proxy_get_property`)",
    "counter": "counter +1 (`proxy_increment_metric`)",
    "gauge": "gauge ±1 (`proxy_increment_metric`)",
    "histogram": "histogram record (`proxy_record_metric`)",
}


def run(args, cores: benchlib.Cores, log=print) -> dict:
    for path, what in ((benchlib.EMPTY_WASM, "empty filter"), (benchlib.HOSTCALL_WASM, "hostcall probe")):
        if not path.exists():
            raise SystemExit(f"the {what} is missing ({path}): the Makefile's bench target builds it")
    _, stats = harness.compile_contract(cpu_per_request.DEFAULT_CONTRACT)
    variants = ["empty filter", *OPERATIONS]
    results = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="metricpact-bench-hostcalls-") as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        upstream = benchlib.started(stack, benchlib.upstream_config(cpu_per_request.upstream_routes()), tmp, cores.load)
        filters = {"empty filter": [harness.wasm_http_filter("", wasm=benchlib.EMPTY_WASM, name="empty")]}
        for op in OPERATIONS:
            filters[op] = [harness.wasm_http_filter(f"{op}:{args.calls}", wasm=benchlib.HOSTCALL_WASM, name="probe")]
        envoys = {v: benchlib.started(stack, benchlib.proxy_config(upstream.port, filters[v], stats), tmp, cores.envoy)
                  for v in variants}

        def drive(variant, seconds):
            us, res = benchlib.cpu_per_request(envoys[variant], seconds=seconds, connections=args.connections,
                                               core=cores.load, script=benchlib.LUA / "traffic.lua")
            return us, res.requests

        for v in variants:
            drive(v, args.warmup)
        sent = {v: 0 for v in variants}
        for r in range(args.rounds):
            for v in benchlib.rotated(variants, r):
                us, requests = drive(v, args.seconds)
                results[v].append(us)
                sent[v] += requests
            log(f"  hostcalls round {r + 1}/{args.rounds}: " + "  ".join(f"{v} {results[v][-1]:.1f}" for v in variants)
                + " us CPU/request")
        # The probe really made its calls, and every one worked: its request counter moved with
        # the traffic, its failure counter did not (a failing call would be priced as a working one).
        for op in OPERATIONS:
            counted = benchlib.admin_counter(envoys[op], "wasmcustom.probe.requests")
            if counted < sent[op]:
                raise RuntimeError(f"hostcall probe `{op}` ran for {counted} requests, wrk completed {sent[op]}")
            failures = benchlib.admin_counter(envoys[op], "wasmcustom.probe.failures")
            if failures:
                raise RuntimeError(f"hostcall probe `{op}`: {failures} of its calls failed (non-Ok status or no data)")

    empty = results["empty filter"]
    summary = {"rounds": args.rounds, "seconds": args.seconds, "calls": args.calls,
               "empty_cpu_us": median(empty), "operations": {}}
    for op in OPERATIONS:
        per_call = median((x - e) / args.calls for x, e in zip(results[op], empty))
        summary["operations"][op] = {"cpu_us": median(results[op]), "per_call_us": per_call,
                                     "per_request": PER_REQUEST[op], "rounds": results[op]}
    # A negative price is noise larger than the call: it is shown, and left out of the sum, which
    # then says it is a lower bound.
    summary["below_noise"] = [op for op, o in summary["operations"].items() if o["per_call_us"] < 0]
    summary["metricpact_per_request_us"] = sum(max(0.0, o["per_call_us"]) * o["per_request"]
                                               for o in summary["operations"].values())
    return summary


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    parser.add_argument("--seconds", type=int, default=3, help="wrk seconds per variant and round")
    parser.add_argument("--warmup", type=int, default=1, help="wrk seconds per variant before the rounds")
    parser.add_argument("--calls", type=int, default=50, help="hostcalls per request (N)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (fixed concurrency)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--cores", help="ENVOY,LOAD CPU numbers (default: the first two allowed)")
    args = parser.parse_args()
    summary = run(args, benchlib.Cores.choose(args.cores))
    print()
    for op, o in summary["operations"].items():
        print(f"{DESCRIPTION[op]:55s} {o['per_call_us']:6.2f} us per call  (x{o['per_request']} per metricpact request)")
    bound = " at least" if summary["below_noise"] else ""
    print(f"metricpact's hostcalls per request (default contract):{bound} {summary['metricpact_per_request_us']:.1f} us"
          + (f" (below the noise, left out: {', '.join(summary['below_noise'])})" if summary["below_noise"] else ""))


if __name__ == "__main__":
    sys.exit(main())
