"""Throughput of metricpact's exposition rewrite, natively (the CLI) and inside Envoy (the filter).

(a) native: generates a large, realistic Prometheus text exposition (a prom-client-style service
    with many routes: a counter, a millisecond histogram, a gauge, runtime noise) and times
    `metricpact rewrite` over it with a realistic contract (metric and label renames, pod/namespace
    injection, runtime families dropped), best of N runs: MB/s = input MB / wall seconds of the
    whole process (nothing subtracted). A tiny input shows the process's startup cost, and a second
    contract adds a label drop, whose series are summed (the aggregating path).
(b) through Envoy: an upstream serves a ~900 KB exposition of the same shape; `wrk` (1 connection,
    sequential scrapes) scrapes it through a sidecar running the rewrite and through an identical
    Envoy without the filter (same build, same bootstrap otherwise). Reports the per-scrape latency
    of both and the rewrite's MB/s = body MB / added latency per scrape. Both listeners get a 4 MiB
    per_connection_buffer_limit_bytes: with Envoy's default (1 MiB) a rewritten body that grows past
    1 MiB crashes the sidecar (see the report; test_exposition.py's
    test_rewrite_growing_past_envoys_buffer_limit_never_fails_the_scrape).

usage: .venv/bin/python tests/bench/rewrite_throughput.py [--mb 32] [--runs 5] [--seconds 4] [--rounds 2]
Every process it starts is stopped before it exits.
"""

from __future__ import annotations

import argparse
import http.server
import re
import shlex
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "envoy"))
import harness  # noqa: E402

NODE = {"NAME": "orders-5b7c9d8f6-q4z7x", "NAMESPACE": "shop"}

CONTRACT = """
format: metricpact/v1
name: bench
version: 1.0.0
exposition:
  max_body_bytes: {max_body}
  drop_metrics: ['go_.*', 'process_.*', 'nodejs_.*']
  rename_metrics:
    - {{from: request_count, to: http_requests_total}}
    - {{regex: '(.+)_duration_ms', to: '${{1}}_duration_milliseconds'}}
  rename_labels:
    - {{from: status_code, to: http_response_status_code}}
    - {{from: method, to: http_request_method}}
    - {{from: route, to: http_route}}
  inject_labels:
    - {{name: k8s_pod_name, from: node.NAME}}
    - {{name: k8s_namespace_name, from: node.NAMESPACE}}
{extra}"""
LABEL_DROP = """  drop_labels:
    - label: http_request_method
      metrics: [http_request_duration_milliseconds]
"""

TINY = (b"# HELP request_count Number of HTTP requests handled, by status code.\n# TYPE request_count counter\n"
        b'request_count{route="/api/orders",method="GET",status_code="200"} 5\n'
        b"# HELP process_cpu_user_seconds_total Total user CPU time spent in seconds.\n"
        b"# TYPE process_cpu_user_seconds_total counter\nprocess_cpu_user_seconds_total 12.345\n")

BOUNDS = ["5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "+Inf"]
METHODS = ["GET", "POST", "PUT", "DELETE"]
CODES = ["200", "201", "404", "500"]


def exposition(target_bytes: int) -> bytes:
    """A prom-client-style text exposition of about `target_bytes`: runtime noise first, then
    per-route counters (method x status), a per-route/method histogram and per-queue gauges."""
    noise = [
        "# HELP process_cpu_user_seconds_total Total user CPU time spent in seconds.",
        "# TYPE process_cpu_user_seconds_total counter", "process_cpu_user_seconds_total 12.345",
        "# HELP process_resident_memory_bytes Resident memory size in bytes.",
        "# TYPE process_resident_memory_bytes gauge", "process_resident_memory_bytes 98765432",
        "# HELP nodejs_eventloop_lag_seconds Lag of event loop in seconds.",
        "# TYPE nodejs_eventloop_lag_seconds gauge", "nodejs_eventloop_lag_seconds 0.00123",
        "# HELP nodejs_heap_space_size_used_bytes Process heap space size used from Node.js in bytes.",
        "# TYPE nodejs_heap_space_size_used_bytes gauge",
        *[f'nodejs_heap_space_size_used_bytes{{space="{s}"}} {i * 1000 + 17}'
          for i, s in enumerate(["read_only", "new", "old", "code", "shared", "trusted", "new_large_object"])],
        "",
    ]
    head = "\n".join(noise) + "\n"
    # Bytes per route, roughly: counters ~16 x 85, histogram 4 x 13 x 110, gauge 90.
    per_route = 16 * 85 + 4 * 13 * 110 + 90
    routes = max(1, (target_bytes - len(head)) // per_route)
    parts = [head, "# HELP request_count Number of HTTP requests handled, by status code.\n",
             "# TYPE request_count counter\n"]
    for r in range(routes):
        route = f"/api/v1/orders/{r:05d}/items/:id"
        for m in METHODS:
            for c in CODES:
                parts.append(f'request_count{{route="{route}",method="{m}",status_code="{c}"}} {(r * 7 + len(m) * 3 + int(c)) % 100000}\n')
    parts.append("\n# HELP http_request_duration_ms Duration of HTTP requests in ms.\n"
                 "# TYPE http_request_duration_ms histogram\n")
    for r in range(routes):
        route = f"/api/v1/orders/{r:05d}/items/:id"
        for m in METHODS:
            labels = f'route="{route}",method="{m}",status_code="200"'
            count = 0
            for i, le in enumerate(BOUNDS):
                count += (r + i) % 5
                parts.append(f'http_request_duration_ms_bucket{{le="{le}",{labels}}} {count}\n')
            parts.append(f"http_request_duration_ms_sum{{{labels}}} {count * 37.5}\n")
            parts.append(f"http_request_duration_ms_count{{{labels}}} {count}\n")
    parts.append("\n# HELP queue_depth Messages waiting, per queue.\n# TYPE queue_depth gauge\n")
    for r in range(routes):
        parts.append(f'queue_depth{{queue="orders-{r:05d}"}} {r % 97}\n')
    return "".join(parts).encode()


def rewrite_argv(contract: Path, path: Path) -> list:
    return [str(harness.CLI), "rewrite", "--contract", str(contract), "--node", f"NAME={NODE['NAME']}",
            "--node", f"NAMESPACE={NODE['NAMESPACE']}", str(path)]


def time_cli(contract: Path, path: Path, runs: int) -> tuple[float, int]:
    """Best wall time of `runs` runs with stdout to /dev/null (as `... > /dev/null` in a shell),
    and the output size (from one more run whose output is kept)."""
    def run(stdout):
        start = time.perf_counter()
        res = subprocess.run(rewrite_argv(contract, path), stdout=stdout, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - start
        if res.returncode != 0 or b"rewritten as" not in res.stderr:
            raise RuntimeError(f"rewrite failed ({res.returncode}): {res.stderr.decode()[-500:]}")
        return elapsed, res.stdout
    best = min(run(subprocess.DEVNULL)[0] for _ in range(runs))
    return best, len(run(subprocess.PIPE)[1])


# ---------------------------------------------------------------- Envoy

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = self.server.body
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def envoy_config(upstream_port: int, http_filters: list, stats: dict) -> dict:
    config = harness.bootstrap(listener_port=harness.free_port(), admin_port=harness.free_port(),
                               upstream_port=upstream_port, http_filters=http_filters, stats_config=stats,
                               node_metadata=NODE)
    config["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = 4 << 20
    for cluster in config["static_resources"]["clusters"]:
        cluster["per_connection_buffer_limit_bytes"] = 4 << 20
    return config


def wrk(port: int, seconds: int) -> tuple[float, float, int]:
    """(mean latency ms, median latency ms, requests) of sequential GET /metrics for `seconds`."""
    out = subprocess.run(["wrk", "-t1", "-c1", f"-d{seconds}s", "--latency", "-H", "Accept: text/plain;version=0.0.4",
                          f"http://127.0.0.1:{port}/metrics"], capture_output=True, text=True, check=True).stdout
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}

    def ms(text):
        m = re.match(r"([\d.]+)(us|ms|s)$", text)
        if m is None:
            raise RuntimeError(f"cannot parse {text!r} in wrk output:\n{out}")
        return float(m.group(1)) * unit[m.group(2)]
    mean = ms(re.search(r"Latency\s+(\S+)", out).group(1))
    median = ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return mean, median, requests


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=32, help="size of the native input (MB)")
    parser.add_argument("--runs", type=int, default=5, help="native runs (best is reported)")
    parser.add_argument("--envoy-kb", type=int, default=480, help="size of the body served through Envoy (KB); the realistic contract doubles it, and the rewrite must stay under max_body_bytes (1 MB)")
    parser.add_argument("--seconds", type=int, default=4, help="wrk duration per round and Envoy")
    parser.add_argument("--rounds", type=int, default=2, help="alternating wrk rounds per Envoy")
    args = parser.parse_args()
    command = " ".join([".venv/bin/python", "tests/bench/rewrite_throughput.py", *map(shlex.quote, sys.argv[1:])])
    summary = []

    with tempfile.TemporaryDirectory(prefix="metricpact-bench-") as tmp:
        tmp = Path(tmp)
        contract = tmp / "bench.yaml"
        contract.write_text(CONTRACT.format(max_body=64 << 20, extra=""))
        contract_agg = tmp / "bench-aggregate.yaml"
        contract_agg.write_text(CONTRACT.format(max_body=64 << 20, extra=LABEL_DROP))

        # ---- (a) native
        t0 = time.perf_counter()
        big = exposition(int(args.mb * 1e6))
        big_path, tiny_path = tmp / "big.txt", tmp / "tiny.txt"
        big_path.write_bytes(big)
        tiny_path.write_bytes(TINY)
        lines = big.count(b"\n")
        print(f"generated {len(big) / 1e6:.1f} MB, {lines:,} lines in {time.perf_counter() - t0:.1f} s")
        tiny_s, _ = time_cli(contract, tiny_path, args.runs)
        big_s, out_size = time_cli(contract, big_path, args.runs)
        agg_s, agg_size = time_cli(contract_agg, big_path, args.runs)
        mb = len(big) / 1e6
        summary += [
            f"(a) native `metricpact rewrite --contract C --node ... FILE > /dev/null` (best of {args.runs}, "
            f"wall time of the whole process):",
            f"    input {mb:.1f} MB / {lines:,} lines -> output {out_size / 1e6:.1f} MB",
            f"    renames + injection + family drop:        {big_s * 1e3:8.1f} ms  = {mb / big_s:6.1f} MB/s",
            f"    ... + a label drop (series summed):       {agg_s * 1e3:8.1f} ms  = {mb / agg_s:6.1f} MB/s"
            f"  (output {agg_size / 1e6:.1f} MB)",
            f"    tiny input ({tiny_path.stat().st_size} bytes, process startup):  {tiny_s * 1e3:8.1f} ms",
        ]

        # ---- (b) through Envoy
        body = exposition(args.envoy_kb * 1000)
        envoy_contract = tmp / "bench-envoy.yaml"
        envoy_contract.write_text(CONTRACT.format(max_body=1_000_000, extra=""))
        expected = subprocess.run(rewrite_argv(envoy_contract, Path("-")), input=body,
                                  capture_output=True, check=True).stdout
        plugin_config, stats = harness.compile_contract(envoy_contract)
        server = _Server(("127.0.0.1", 0), _Handler)
        server.body = body
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            port = server.server_address[1]
            plain = harness.Envoy(envoy_config(port, [], stats), tmp, concurrency=1)
            filtered = harness.Envoy(envoy_config(port, [harness.wasm_http_filter(plugin_config)], stats), tmp,
                                     concurrency=1)
            with plain, filtered:
                status, got = harness.http_get(filtered.port, "/metrics")
                if status != 200 or got != expected:
                    raise RuntimeError(f"the filter's output differs from the CLI's (status {status}, "
                                       f"{len(got)} vs {len(expected)} bytes)")
                status, got = harness.http_get(plain.port, "/metrics")
                assert status == 200 and got == body
                for envoy in (plain, filtered):   # warm up
                    wrk(envoy.port, 1)
                results = {"no filter": [], "metricpact": []}
                for r in range(args.rounds):
                    for name, envoy in (("no filter", plain), ("metricpact", filtered)):
                        mean, median, n = wrk(envoy.port, args.seconds)
                        results[name].append((mean, median, n))
                        print(f"round {r + 1}: {name:10s} mean {mean:6.2f} ms  median {median:6.2f} ms  ({n} scrapes)")
                expo = filtered.scrape()
                rewritten = expo.total("metricpact_exposition_scrapes_total", metricpact_result="rewritten")
                others = sum(s.value for s in expo.series("metricpact_exposition_scrapes_total")) - rewritten
        finally:
            server.shutdown()
            server.server_close()
        base = statistics.median(m for m, _, _ in results["no filter"])
        mp = statistics.median(m for m, _, _ in results["metricpact"])
        base_p50 = statistics.median(p for _, p, _ in results["no filter"])
        mp_p50 = statistics.median(p for _, p, _ in results["metricpact"])
        added = mp - base
        summary += [
            f"(b) through Envoy 1.40 (1 worker; wrk -t1 -c1, {args.rounds} x {args.seconds} s per Envoy, "
            f"median of rounds):",
            f"    body {len(body) / 1e3:.0f} KB -> rewritten {len(expected) / 1e3:.0f} KB (identical to the CLI's)",
            f"    per scrape, no filter:   mean {base:6.2f} ms  median {base_p50:6.2f} ms",
            f"    per scrape, metricpact:  mean {mp:6.2f} ms  median {mp_p50:6.2f} ms",
            f"    added by the rewrite:    {added:6.2f} ms per scrape = {len(body) / 1e6 / (added / 1e3):6.1f} MB/s"
            if added > 0 else f"    added by the rewrite:    {added:6.2f} ms per scrape (within noise)",
            f"    metricpact counted {int(rewritten):,} rewritten scrapes, {int(others)} other outcomes",
        ]

    print("\n" + "=" * 78)
    print(f"metricpact exposition rewrite throughput   ({command})")
    print(f"metricpact: {harness.CLI}, metricpact.wasm: {harness.WASM} ({harness.WASM.stat().st_size:,} bytes)")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
