"""Size and memory: metricpact.wasm's size, and Envoy's memory and stats after 1,000,000 requests
spread over 100,000 distinct paths.

The sidecar (one worker, pinned to one CPU) runs metricpact with tests/bench/raw-paths-contract.yaml:
unmatched paths become the raw path in http_route, so the traffic tries to create 100,000 route
values; the label's max_values and the contract's max_series are what must keep Envoy's stats
bounded. wrk (tests/bench/lua/paths.lua: GET /r/<k>, k round-robin over the distinct paths; it stops
after the given number of responses) drives it through to a direct-response upstream Envoy. An
identical Envoy without the filter gets the same kind of traffic, for reference. Reported: VmRSS before and
after, the VM's linear memory (the filter's `metricpact_vm_memory_bytes` gauge, when the filter
exports it), the series of each metricpact metric against the budget, and Envoy's total stats.
The Envoy without the filter gets 200,000 of those requests by default (it keeps no per-path
state, so more would only take longer).

usage: .venv/bin/python tests/bench/memory.py [--requests 1000000] [--paths 100000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import harness

CONTRACT = benchlib.BENCH / "raw-paths-contract.yaml"
VM_MEMORY = "metricpact_vm_memory_bytes"


def metricpact_metrics(plugin_config: str) -> dict:
    """{metric name: kind} of the traffic metrics the compiled contract enables."""
    config = json.loads(plugin_config)
    out = {}
    for key, kind in (("requests", "counter"), ("duration", "histogram"), ("active_requests", "gauge")):
        spec = config.get(key)
        if spec:
            out[spec["name"]] = kind
    return out


def series_count(expo: "harness.Exposition", name: str, kind: str) -> int:
    sample = f"{name}_count" if kind == "histogram" else name
    return len({tuple(sorted(s.labels.items())) for s in expo.series(sample)})


def envoy_stats_count(envoy) -> tuple[int, int]:
    """(all stats, stats of the Wasm filters' own metrics) in Envoy's /stats listing."""
    status, body = harness.http_get(envoy.admin_port, "/stats", timeout=60)
    assert status == 200
    lines = [line for line in body.decode(errors="replace").splitlines() if line.strip()]
    return len(lines), sum(1 for line in lines if line.startswith("wasmcustom."))


def load(envoy, args, cores, log, name, requests_target=None) -> dict:
    total = requests_target or args.requests
    rss_before = benchlib.rss_bytes(envoy.proc.pid)
    t0 = time.monotonic()
    served = "http.inbound.downstream_rq_completed"
    start = benchlib.admin_counter(envoy, served)
    res = benchlib.wrk(f"http://127.0.0.1:{envoy.port}/", seconds=args.max_seconds, connections=args.connections,
                       core=cores.load, script=benchlib.LUA / "paths.lua", script_args=(total, args.paths),
                       until=lambda: benchlib.admin_counter(envoy, served) - start >= total, poll_s=0.2)
    elapsed = time.monotonic() - t0
    requests = benchlib.admin_counter(envoy, served) - start
    if requests < total:
        raise RuntimeError(f"{name}: only {requests} of {total} requests in {args.max_seconds} s")
    time.sleep(6)   # one stats flush (5 s) after the load: histograms merged, as a scraper would see them
    completed = benchlib.admin_counter(envoy, served) - start   # the in-flight ones are done by now
    rss_after = benchlib.rss_bytes(envoy.proc.pid)
    log(f"  memory: {name:10s} {requests:,} requests in {elapsed:.0f} s ({requests / elapsed:,.0f} req/s); "
        f"VmRSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB")
    return {"requests": requests, "completed": completed, "seconds": elapsed, "p50_ms": res.p50_ms,
            "p99_ms": res.p99_ms, "rss_before": rss_before, "rss_after": rss_after}


def run(args, cores: benchlib.Cores, log=print) -> dict:
    plugin_config, stats = harness.compile_contract(CONTRACT)
    config = json.loads(plugin_config)
    metrics = metricpact_metrics(plugin_config)
    result = {"wasm_bytes": harness.WASM.stat().st_size, "empty_wasm_bytes": benchlib.EMPTY_WASM.stat().st_size
              if benchlib.EMPTY_WASM.exists() else None,
              "requests_target": args.requests, "paths": args.paths, "max_series": config["max_series"],
              "contract": str(CONTRACT.relative_to(benchlib.ROOT))}
    with tempfile.TemporaryDirectory(prefix="metricpact-bench-memory-") as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        upstream = benchlib.started(stack, benchlib.upstream_config([benchlib.direct(200)]), tmp, cores.load)
        filtered = benchlib.started(stack, benchlib.proxy_config(
            upstream.port, [harness.wasm_http_filter(plugin_config)], stats), tmp, cores.envoy)
        plain = benchlib.started(stack, benchlib.proxy_config(upstream.port, [], stats), tmp, cores.envoy)
        result["metricpact"] = load(filtered, args, cores, log, "metricpact")
        expo = filtered.scrape()
        counted = expo.total(next(iter(metrics))) if metrics else None
        result["metricpact"]["counted"] = counted
        # Every request Envoy completed went through the filter and was counted once: the budgets
        # fold series, they never drop a request.
        if counted is not None and counted != result["metricpact"]["completed"]:
            raise RuntimeError(f"metricpact counted {counted:.0f} requests; Envoy completed "
                               f"{result['metricpact']['completed']} on the listener")
        result["series"] = {name: series_count(expo, name, kind) for name, kind in metrics.items()}
        vm = expo.series(VM_MEMORY)
        result["vm_memory_bytes"] = max(s.value for s in vm) if vm else None
        result["series_overflow"] = expo.total("metricpact_series_overflow_total")
        result["label_overflow"] = expo.total("metricpact_label_overflow_total")
        result["route_values"] = len({s.labels.get("http_route") for s in expo.series(next(iter(metrics)))}) \
            if metrics else None
        result["stats_total"], result["stats_wasm"] = envoy_stats_count(filtered)
        if not args.no_baseline:
            result["no filter"] = load(plain, args, cores, log, "no filter", args.baseline_requests)
            result["no filter"]["stats_total"], _ = envoy_stats_count(plain)
    return result


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--requests", type=int, default=1_000_000, help="requests through each Envoy")
    parser.add_argument("--paths", type=int, default=100_000, help="distinct request paths")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections")
    parser.add_argument("--max-seconds", type=int, default=600, help="give up after this long")
    parser.add_argument("--baseline-requests", type=int, default=200_000,
                        help="requests through the Envoy without the filter (it keeps no per-path state)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the Envoy without the filter")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--cores", help="ENVOY,LOAD CPU numbers (default: the first two allowed)")
    args = parser.parse_args()
    r = run(args, benchlib.Cores.choose(args.cores))
    print()
    vm = r["vm_memory_bytes"]
    print(f"metricpact.wasm {r['wasm_bytes']:,} bytes; VM linear memory "
          f"{'n/a' if vm is None else f'{vm / 2**20:.2f} MiB'}; series {r['series']} (max_series {r['max_series']}); "
          f"Envoy stats {r['stats_total']:,} ({r['stats_wasm']:,} from the filter)")


if __name__ == "__main__":
    sys.exit(main())
