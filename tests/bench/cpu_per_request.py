"""Envoy CPU per request with and without metricpact, measured side by side in one run.

Two Envoys (one worker each) answer every request with a direct response; one runs the
metricpact filter with the given contract. wrk drives each in turn for several alternating
rounds; CPU is read from /proc/<pid>/stat (user+system) around each round, so the figure is
Envoy's own CPU per request, not the client's. Prints per-round figures, medians and the ratio.

usage: python tests/bench/cpu_per_request.py [--contract FILE] [--seconds N] [--rounds N]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "envoy"))
import harness  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def envoy_config(http_filters, stats_config):
    config = harness.bootstrap(listener_port=harness.free_port(), admin_port=harness.free_port(),
                               upstream_port=harness.free_port(), http_filters=http_filters,
                               stats_config=stats_config, node_metadata=harness.ISTIO_NODE_METADATA)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["virtual_hosts"][0]["routes"] = [
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]
    return config


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def drive(envoy, seconds, path):
    before = cpu_seconds(envoy.proc.pid)
    out = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", f"http://127.0.0.1:{envoy.port}{path}"],
                         capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(envoy.proc.pid) - before
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return used / requests * 1e6, requests / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contract", default=str(harness.ROOT / "contracts/http-server.yaml"))
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--path", default="/users/42?x=1")
    args = parser.parse_args()

    plugin_config, stats = harness.compile_contract(args.contract)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = harness.Envoy(envoy_config([], stats), Path(tmp), concurrency=1)
        filtered = harness.Envoy(envoy_config([harness.wasm_http_filter(plugin_config)], stats), Path(tmp),
                                 concurrency=1)
        with baseline, filtered:
            for envoy in (baseline, filtered):  # warm up
                drive(envoy, 1, args.path)
            results = {"no filter": [], "metricpact": []}
            for r in range(args.rounds):
                for name, envoy in (("no filter", baseline), ("metricpact", filtered)):
                    us, rps = drive(envoy, args.seconds, args.path)
                    results[name].append(us)
                    print(f"round {r + 1}: {name:10s} {us:6.1f} us CPU/request  ({rps:,.0f} req/s)")
            counted = filtered.scrape().total("http_server_requests_total")
    base = statistics.median(results["no filter"])
    mp = statistics.median(results["metricpact"])
    print(f"\nmedian Envoy CPU per request: no filter {base:.1f} us, metricpact {mp:.1f} us "
          f"(+{mp - base:.1f} us, ratio {mp / base:.2f}x); metricpact counted {int(counted):,} requests")
    print(f"metricpact.wasm: {harness.WASM.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
