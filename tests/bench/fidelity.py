"""`make fidelity`: how close the p50/p95/p99 an autoscaler reads are to the truth, for classic
and native duration histograms.

For each latency shape (uniform 10-30 ms, bimodal 5 ms / 400 ms, a long tail) a fresh sidecar
Envoy with metricpact (the default contract's labels; classic with its OTel buckets in
milliseconds, native in milliseconds and in microseconds) proxies N requests to an upstream
that sleeps a seeded, known sequence of delays and measures its own service time per request:
the truth is the exact quantile of those server-side latencies. A real Prometheus scrapes the
sidecar twice, as rendered: as text (classic `_bucket` series) and as protobuf with
`?histogram_buckets=prometheusnative` (native; Prometheus 2.42 with native histograms on), and
the quantiles come from the rendered queries' shapes over a window that holds the whole run. The
native histogram's resolution (schema) and bucket count are read from what Prometheus stored.
Fresh Envoys per shape matter: Envoy picks the native resolution from everything a histogram
ever recorded.

usage: .venv/bin/python tests/bench/fidelity.py [--requests 1000] [--rate 100] [--markdown FILE]
Every process it starts is stopped before it exits.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import math
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import benchlib
from benchlib import harness

sys.path.insert(0, str(benchlib.ROOT / "tests" / "envoy"))
from scrape import ScrapePrometheus  # noqa: E402  (only its query helpers; targets are static here)

QUANTILES = (0.5, 0.95, 0.99)
# What render puts in the native scrape (src/render/scrape.rs NATIVE_MAX_BUCKETS).
NATIVE_MAX_BUCKETS = ("native_histogram_max_buckets", "160")
GOAL = 0.05                 # native p95 within 5 % of the truth


def shapes(rng: random.Random) -> dict:
    """name -> a function drawing one delay in seconds."""
    return {
        "uniform 10-30 ms": lambda: rng.uniform(0.010, 0.030),
        "bimodal 5 ms / 400 ms": lambda: 0.005 if rng.random() < 0.9 else 0.400,
        "long tail (lognormal, median 20 ms)": lambda: min(2.0, rng.lognormvariate(math.log(0.020), 0.9)),
    }


class Upstream(harness.LocalHTTPServer):
    """Sleeps `?d=<seconds>` and records its own service time (the server-side truth)."""

    def __init__(self):
        self.times: list = []
        lock = threading.Lock()
        up = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body leave in two writes: without TCP_NODELAY the second waits for the
            # proxy's delayed ACK (~40 ms), which would be measured as latency.
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_GET(self):
                started = time.perf_counter()
                delay = float(self.path.split("d=", 1)[1]) if "d=" in self.path else 0.0
                time.sleep(delay)
                body = b"ok\n"
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with lock:
                    up.times.append(time.perf_counter() - started)

        super().__init__(Handler)


def quantile(values: list, q: float) -> float:
    """The exact q-quantile (nearest rank) of the measured values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def contract(workdir: Path, unit: str) -> Path:
    text = (benchlib.ROOT / "contracts/http-server.yaml").read_text()
    if unit == "microseconds":
        text = text.replace("name: http_server_request_duration_milliseconds", "name: http_server_request_duration_microseconds")
        text = text.replace("unit: milliseconds ", "unit: microseconds ")
        text = text.replace("buckets: [5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000]",
                            "buckets: [5000, 10000, 25000, 50000, 75000, 100000, 250000, 500000, 750000, 1000000, 2500000, 5000000, 7500000, 10000000]")
    path = workdir / f"contract-{unit}.yaml"
    path.write_text(text)
    return path


def static_job(name: str, port: int, native: bool, extra_params: dict) -> dict:
    job = {"job_name": name, "metrics_path": "/stats/prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
    if native:
        job["params"] = {"histogram_buckets": ["prometheusnative"], **{k: [v] for k, v in extra_params.items()}}
    return job


class Prometheus(ScrapePrometheus):
    """ScrapePrometheus' process and queries, with static jobs (no pod network here)."""

    def __init__(self, workdir: Path, jobs: list, native: bool):
        self.port = harness.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": jobs}
        path = workdir / f"prometheus-{self.port}.yml"
        path.write_text(json.dumps(config))
        args = [harness.PROMETHEUS, f"--config.file={path}", f"--storage.tsdb.path={workdir / f'tsdb-{self.port}'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        if native:
            args.append("--enable-feature=native-histograms")
        super(ScrapePrometheus, self).__init__("prometheus", args, workdir / f"prometheus-{self.port}.log")


PROTOBUF_ACCEPT = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"


def protobuf_scrape(envoy, params: dict) -> bytes:
    query = "&".join(f"{k}={v}" for k, v in {"histogram_buckets": "prometheusnative", **params}.items())
    status, body = harness.http_request(envoy.admin_port, "GET", f"/stats/prometheus?{query}",
                                        headers={"Accept": PROTOBUF_ACCEPT}, timeout=30)
    assert status == 200, body[:200]
    return body


def run_shape(name: str, draw, args, workdir: Path, log) -> dict:
    delays = [draw() for _ in range(args.requests)]
    variants = {"classic ms": ("milliseconds", False), "native ms": ("milliseconds", True), "native µs": ("microseconds", True)}
    out = {}
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(Upstream())
        envoys = {}
        for unit in ("milliseconds", "microseconds"):
            config, stats = harness.compile_contract(contract(workdir, unit))
            envoy_config = harness.bootstrap(listener_port=harness.free_port(), admin_port=harness.free_port(),
                                             upstream_port=upstream.port, http_filters=[harness.wasm_http_filter(config)],
                                             stats_config=stats, node_metadata=harness.ISTIO_NODE_METADATA)
            envoys[unit] = stack.enter_context(harness.Envoy(envoy_config, workdir, concurrency=1))
        # One Prometheus per shape: the text (classic) and protobuf (native) scrapes of both sidecars.
        jobs = [static_job(f"{unit}-{kind}", envoys[unit].admin_port, kind == "native", args.envoy_param)
                for unit in envoys for kind in ("classic", "native")]
        prometheus = stack.enter_context(Prometheus(workdir, jobs, native=True))
        harness.wait_until(lambda: prometheus.query("up") and all(r["value"][1] == "1" for r in prometheus.query("up"))
                           and len(prometheus.query("up")) == len(jobs), timeout=30, what="prometheus scraping")
        started = time.time()
        with ThreadPoolExecutor(max_workers=64) as pool:
            for i, d in enumerate(delays):
                time.sleep(max(0.0, started + i / args.rate - time.time()))
                for envoy in envoys.values():
                    pool.submit(harness.http_request, envoy.port, "GET", f"/work?d={d:.6f}", timeout=30)
        ended = time.time()
        time.sleep(8)   # Envoy's stats flush (5 s, histograms), then a scrape
        at = time.time()
        # What the resolution costs the scrape: the protobuf body with and without the knob.
        out["scrape_bytes"] = {label: len(protobuf_scrape(envoys["milliseconds"], params))
                               for label, params in (("default", {}), ("knob", args.envoy_param))}
        window = f"{math.ceil(at - started + 2)}s"
        truth = {q: quantile(upstream.times, q) * 1000 for q in QUANTILES}   # ms
        out["truth"] = truth
        out["requests"] = len(upstream.times) // 2
        for variant, (unit, native) in variants.items():
            metric = f"http_server_request_duration_{unit}"
            job = f"{unit}-{'native' if native else 'classic'}"
            scale = 1000 if unit == "microseconds" else 1
            row = {}
            for q in QUANTILES:
                if native:
                    query = f'histogram_quantile({q}, sum(rate({metric}{{job="{job}"}}[{window}])))'
                else:
                    query = f'histogram_quantile({q}, sum(rate({metric}_bucket{{job="{job}"}}[{window}])) by (le))'
                result = prometheus.query(query, at)
                row[q] = float(result[0]["value"][1]) / scale if result else float("nan")
            if native:
                stored = prometheus.query(f'sum({metric}{{job="{job}"}})', at)
                buckets = stored[0]["histogram"][1]["buckets"] if stored else []
                row["buckets"] = len(buckets)
                row["growth"] = max((float(b[2]) / float(b[1]) for b in buckets if float(b[1]) > 0), default=float("nan"))
            out[variant] = row
        log(f"  {name}: {out['requests']} requests over {ended - started:.1f} s; true p95 {truth[0.95]:.2f} ms; " +
            "; ".join(f"{v} p95 {out[v][0.95]:.2f} ms ({out[v][0.95] / truth[0.95] - 1:+.1%})" for v in variants))
    return out


def table(results: dict) -> str:
    lines = ["| shape | quantile | true (server-side) | classic, OTel buckets (ms) | native (ms) | native (µs) |",
             "|---|---|---|---|---|---|"]
    for shape, r in results.items():
        for q in QUANTILES:
            cells = [f"{r[v][q]:.2f} ms ({r[v][q] / r['truth'][q] - 1:+.1%})" for v in ("classic ms", "native ms", "native µs")]
            lines.append(f"| {shape} | p{round(q * 100)} | {r['truth'][q]:.2f} ms | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| shape | native buckets stored (ms / µs) | bucket growth factor (ms / µs) | protobuf scrape, Envoy's default → with the parameter |")
    lines.append("|---|---|---|---|")
    for shape, r in results.items():
        b = r["scrape_bytes"]
        lines.append(f"| {shape} | {r['native ms']['buckets']} / {r['native µs']['buckets']} | "
                     f"{r['native ms']['growth']:.3f} / {r['native µs']['growth']:.3f} | {b['default']:,} → {b['knob']:,} bytes |")
    return "\n".join(lines)


def verdicts(results: dict) -> list:
    out = []
    for variant in ("native ms", "native µs"):
        errors = {s: r[variant][0.95] / r["truth"][0.95] - 1 for s, r in results.items()}
        worst = max(errors.values(), key=abs)
        out.append(f"{variant}: p95 within {GOAL:.0%} of the truth for every shape: "
                   f"{'met' if all(abs(e) <= GOAL for e in errors.values()) else 'missed'} (worst {worst:+.1%})")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per shape")
    parser.add_argument("--rate", type=float, default=100, help="requests per second")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--envoy-param", action="append", default=None, metavar="KEY=VALUE",
                        help="the native scrape's other query parameters (default: what render writes, "
                             f"{NATIVE_MAX_BUCKETS[0]}={NATIVE_MAX_BUCKETS[1]}; `none` for Envoy's defaults)")
    args = parser.parse_args()
    given = args.envoy_param or [f"{NATIVE_MAX_BUCKETS[0]}={NATIVE_MAX_BUCKETS[1]}"]
    args.envoy_param = {} if given == ["none"] else dict(p.split("=", 1) for p in given)
    rng = random.Random(args.seed)
    results = {}
    with tempfile.TemporaryDirectory(prefix="metricpact-fidelity-") as tmp:
        for name, draw in shapes(rng).items():
            shape_dir = Path(tmp) / str(len(results))
            shape_dir.mkdir()
            results[name] = run_shape(name, draw, args, shape_dir, print)
    text = table(results) + "\n\n" + "\n".join(f"- {v}" for v in verdicts(results)) + "\n"
    print()
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    benchlib.dump(benchlib.ROOT / "target/bench/fidelity.json", {str(k): v for k, v in results.items()})


if __name__ == "__main__":
    sys.exit(main())
