"""Envoy CPU per proxied request, and latency, for four variants measured side by side in one run.

Four Envoys (one worker each, pinned to one CPU) proxy to one upstream (an Envoy answering with a
direct response, pinned with wrk to the other CPU); they differ only in their HTTP filter:
  no filter          the router only
  empty filter       tests/bench/empty-filter: a Rust proxy-wasm filter whose contexts do nothing
  metricpact         metricpact.wasm with the default contract (contracts/http-server.yaml)
  metricpact heavy   metricpact.wasm with tests/bench/heavy-contract.yaml (16 labels, 5 from request
                     headers, 50 route rules)
wrk (1 thread, fixed connections, tests/bench/lua/traffic.lua: a fixed mix of paths, methods and
headers that exercise the contracts) drives each in turn, for several rounds whose order rotates,
so machine drift hits every variant alike. CPU is the Envoy process's user+system time from
/proc/<pid>/stat around each run, divided by the requests wrk completed. Reported: medians over
the rounds, and ratios paired within each round (median of the per-round ratios).

usage: .venv/bin/python tests/bench/cpu_per_request.py [--rounds 5] [--seconds 5] [--connections 8]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import benchlib
from benchlib import harness, median

DEFAULT_CONTRACT = benchlib.ROOT / "contracts/http-server.yaml"
HEAVY_CONTRACT = benchlib.BENCH / "heavy-contract.yaml"
VARIANTS = ["no filter", "empty filter", "metricpact", "metricpact heavy"]


def upstream_routes() -> list:
    # x-bench-status (set by traffic.lua on a few requests) picks a 404 or a 503.
    return [benchlib.direct(404, header=("x-bench-status", "404")),
            benchlib.direct(503, header=("x-bench-status", "503")),
            benchlib.direct(200)]


def run(args, cores: benchlib.Cores, log=print) -> dict:
    if not benchlib.EMPTY_WASM.exists():
        raise SystemExit(f"{benchlib.EMPTY_WASM} is missing: build it with `cargo build --release --target "
                         "wasm32-wasip1 --manifest-path tests/bench/empty-filter/Cargo.toml --target-dir "
                         "target/bench-empty-filter` (the bench target of the Makefile does)")
    default_config, default_stats = harness.compile_contract(DEFAULT_CONTRACT)
    heavy_config, heavy_stats = harness.compile_contract(HEAVY_CONTRACT)
    script = benchlib.LUA / "traffic.lua"
    results = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="metricpact-bench-cpu-") as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        upstream = benchlib.started(stack, benchlib.upstream_config(upstream_routes()), tmp, cores.load)
        filters = {
            "no filter": ([], default_stats),
            "empty filter": ([harness.wasm_http_filter("", wasm=benchlib.EMPTY_WASM, name="empty")], default_stats),
            "metricpact": ([harness.wasm_http_filter(default_config)], default_stats),
            "metricpact heavy": ([harness.wasm_http_filter(heavy_config)], heavy_stats),
        }
        envoys = {v: benchlib.started(stack, benchlib.proxy_config(upstream.port, *filters[v]), tmp, cores.envoy)
                  for v in VARIANTS}

        def drive(variant, seconds):
            return benchlib.cpu_per_request(envoys[variant], seconds=seconds, connections=args.connections,
                                            core=cores.load, script=script)

        for v in VARIANTS:                      # warm up: VMs, connections, every series defined
            drive(v, args.warmup)
        # What metricpact counted during the warm-up, so the rounds' requests are compared alone.
        counted_before = {v: envoys[v].scrape().total("http_server_requests_total") for v in ("metricpact", "metricpact heavy")}
        for r in range(args.rounds):
            for v in benchlib.rotated(VARIANTS, r):
                us, res = drive(v, args.seconds)
                results[v].append({"cpu_us": us, "p50_ms": res.p50_ms, "p99_ms": res.p99_ms, "rps": res.rps,
                                   "requests": res.requests, "non2xx": res.non2xx})
                log(f"  cpu round {r + 1}/{args.rounds}: {v:16s} {us:6.1f} us CPU/request  p50 {res.p50_ms:6.3f} ms"
                    f"  p99 {res.p99_ms:6.3f} ms  ({res.rps:,.0f} req/s)")
        # The requests were really proxied: only traffic.lua's few 404/503 (2 in 25 of its mix) may
        # fail; a larger share means Envoy rejected them before any HTTP filter ran (as it does,
        # with 400, for requests without a Host header).
        for v in VARIANTS:
            failed = sum(x["non2xx"] for x in results[v]) / sum(x["requests"] for x in results[v])
            if failed > 0.15:
                raise RuntimeError(f"{v}: {failed:.0%} of the requests were not answered 2xx (expected ~8%)")
        # The filters really ran: metricpact counted the rounds' traffic, with the heavy contract's
        # labels. wrk reports the responses it read; a request in flight when a run stops is
        # answered (and counted) too, so each run may add up to one per connection.
        for v in ("metricpact", "metricpact heavy"):
            expo = envoys[v].scrape()
            counted = expo.total("http_server_requests_total") - counted_before[v]
            sent = sum(x["requests"] for x in results[v])
            in_flight = args.rounds * args.connections
            if not sent <= counted <= sent + in_flight:
                raise RuntimeError(f"{v}: metricpact counted {counted:.0f} requests in the rounds, wrk completed {sent} "
                                   f"(up to {in_flight} more may have been in flight)")
        heavy = envoys["metricpact heavy"].scrape().series("http_server_requests_total")
        routes = {s.labels.get("http_route") for s in heavy}
        tiers = {s.labels.get("tenant_tier") for s in heavy}

    summary = {"variants": {}, "rounds": args.rounds, "seconds": args.seconds, "connections": args.connections,
               "heavy_series": len(heavy), "heavy_routes": len(routes - {"_OTHER"}), "heavy_tiers": sorted(t for t in tiers if t)}
    base, empty = results["no filter"], results["empty filter"]
    for v in VARIANTS:
        rows = results[v]
        entry = {k: median(x[k] for x in rows) for k in ("cpu_us", "p50_ms", "p99_ms", "rps")}
        for key in ("cpu_us", "p50_ms", "p99_ms"):
            entry[f"{key}_x_nofilter"] = median(x[key] / b[key] for x, b in zip(rows, base))
            entry[f"{key}_x_empty"] = median(x[key] / e[key] for x, e in zip(rows, empty))
        added = median(x["cpu_us"] - b["cpu_us"] for x, b in zip(rows, base))
        empty_added = median(e["cpu_us"] - b["cpu_us"] for e, b in zip(empty, base))
        entry["cpu_added_us"] = added
        entry["cpu_added_x_empty_added"] = added / empty_added if empty_added > 0 else float("nan")
        entry["rounds"] = rows
        summary["variants"][v] = entry
    return summary


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (median reported)")
    parser.add_argument("--seconds", type=int, default=5, help="wrk seconds per variant and round")
    parser.add_argument("--warmup", type=int, default=2, help="wrk seconds per variant before the rounds")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (fixed concurrency)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--cores", help="ENVOY,LOAD CPU numbers (default: the first two allowed)")
    args = parser.parse_args()
    summary = run(args, benchlib.Cores.choose(args.cores))
    print()
    for v, e in summary["variants"].items():
        print(f"{v:16s} {e['cpu_us']:6.1f} us/request  x{e['cpu_us_x_nofilter']:.2f} no filter  "
              f"x{e['cpu_us_x_empty']:.2f} empty  +{e['cpu_added_us']:.1f} us (x{e['cpu_added_x_empty_added']:.2f} "
              f"the empty filter's)  p50 {e['p50_ms']:.3f} ms  p99 {e['p99_ms']:.3f} ms  {e['rps']:,.0f} req/s")


if __name__ == "__main__":
    sys.exit(main())
