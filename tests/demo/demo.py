"""metricpact demo: one contract, two apps in two languages, one autoscaling query.

What it does, with real processes on 127.0.0.1 and free ports only:
  1. checks and compiles tests/demo/shop.yaml with the real metricpact CLI;
  2. starts a Python "cart" app and a Node "catalog" app (tests/apps/), neither of which exports
     any metric, and puts each behind its own Envoy "pod" running metricpact.wasm, with the node
     metadata an Istio sidecar would have (pod name, namespace, labels);
  3. starts a real Prometheus whose scrape job mimics Kubernetes' `kubernetes-pods` job: it scrapes
     each sidecar's /stats/prometheus and adds the `namespace` and `pod` target labels;
  4. drives a steady, known load through both sidecars, recording what the client sent and saw;
  5. runs exactly the queries an HPA adapter (prometheus-adapter) would run -- QPS per pod and p95
     per pod -- and compares them with the client's own numbers.

Everything it starts is stopped again, also on errors, Ctrl-C, SIGTERM or its own time limit.
Exit status: 0 when every check passed, 1 otherwise.

Usage: .venv/bin/python tests/demo/demo.py   (METRICPACT_BIN selects the CLI, as in the tests)
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "envoy"))
import harness  # noqa: E402  (the tests' real-process harness)

CONTRACT = ROOT / "tests" / "demo" / "shop.yaml"
APPS = ROOT / "tests" / "apps"
PROMETHEUS = harness.PROMETHEUS
NODE = shutil.which("node") or "/usr/bin/node"
NAMESPACE = "shop"

LOAD_SECONDS = 24        # steady load per pod
WINDOW_SECONDS = 20      # PromQL range; the window ends 1 s before the load does
QUERY_LAG_SECONDS = 1
TIME_LIMIT_SECONDS = 80  # the whole demo, before clean-up
MAX_QPS_ERROR = 0.20     # Prometheus vs. client
MAX_P95_ERROR = 0.25     # histogram_quantile interpolates inside a bucket: allow for it

# The queries an HPA adapter runs per pod (prometheus-adapter style), written out literally.
QPS_QUERY = 'sum(rate(http_server_requests_total{{namespace="shop",pod="{pod}"}}[20s])) by (pod)'
P95_QUERY = ('histogram_quantile(0.95, sum(rate(http_server_request_duration_milliseconds_bucket'
             '{{namespace="shop",pod="{pod}"}}[20s])) by (le, pod))')
ROUTES_QUERY = ('sum(rate(http_server_requests_total{namespace="shop"}[20s]))'
                ' by (pod, http_route, http_response_status_code)')
assert all(f"[{WINDOW_SECONDS}s]" in q for q in (QPS_QUERY, P95_QUERY, ROUTES_QUERY))


class TimeLimitReached(Exception):
    """Raised in the main thread when the demo runs longer than TIME_LIMIT_SECONDS."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM; like KeyboardInterrupt, it only unwinds (and cleans up)."""


# ---------------------------------------------------------------- the two services and their traffic

def cart_request(rng: random.Random) -> tuple[str, str, bytes | None]:
    cart = f"c-{rng.randint(1000, 9999)}"
    roll = rng.random()
    if roll < 0.55:
        return "GET", f"/cart/{cart}", None
    if roll < 0.92:
        item = {"sku": f"sku-{rng.randint(1, 500)}", "qty": rng.randint(1, 3)}
        return "POST", f"/cart/{cart}/items", json.dumps(item).encode()
    if roll < 0.97:
        return "GET", "/healthz", None
    return "GET", f"/cart/{cart}/coupons", None  # not a route of the app: 404


def catalog_request(rng: random.Random) -> tuple[str, str, bytes | None]:
    roll = rng.random()
    if roll < 0.60:
        return "GET", f"/products/p-{rng.randint(1, 5000)}", None
    if roll < 0.90:
        return "GET", f"/products?page={rng.randint(1, 40)}", None
    if roll < 0.95:
        return "GET", "/healthz", None
    return "GET", f"/products/unknown-{rng.randint(1, 99)}", None  # the app answers 404


@dataclass
class Result:
    end: float          # wall clock, when the response was complete
    latency_ms: float
    status: int         # 0: no response


@dataclass
class Pod:
    name: str
    app: str
    language: str
    command: Callable[[int], list]
    rate: float                                  # requests per second the client sends
    next_request: Callable[[random.Random], tuple]
    app_port: int = 0
    app_process: Process | None = None
    envoy: harness.Envoy | None = None
    results: list = field(default_factory=list)

    def node_metadata(self) -> dict:
        """What istio-agent puts into the sidecar's bootstrap node metadata."""
        return {"NAME": self.name, "NAMESPACE": NAMESPACE, "WORKLOAD_NAME": self.app,
                "CLUSTER_ID": "Kubernetes", "LABELS": {"app": self.app, "version": "v1"}}


PODS = [
    Pod("cart-7d9f8b6c5-x2x8k", "cart", "Python",
        lambda port: [sys.executable, str(APPS / "python_app.py"), "--port", str(port)],
        rate=40, next_request=cart_request),
    Pod("catalog-6b7c9d8f4-q7k2p", "catalog", "Node.js",
        lambda port: [NODE, str(APPS / "node_app.js"), "--port", str(port)],
        rate=20, next_request=catalog_request),
]


# ---------------------------------------------------------------- processes

class Process:
    """A child process with its output in a log file; `with` starts it and always stops it."""

    def __init__(self, name: str, argv: list, log_path: Path):
        self.name, self.argv, self.log_path = name, argv, log_path
        self.proc = None

    def __enter__(self):
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:  # did not stop in time, or we were interrupted meanwhile
                self.proc.kill()
                self.proc.wait()
            self.log.close()

    def check_running(self):
        if self.proc.poll() is not None:
            tail = self.log_tail().strip()
            raise RuntimeError(f"{self.name} exited with status {self.proc.returncode}"
                               + (f":\n{tail}" if tail else " (no output)"))

    def log_tail(self, chars=2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def check_still_running(pods: list, prometheus: Process):
    for pod in pods:
        pod.app_process.check_running()
        if pod.envoy.proc.poll() is not None:
            raise RuntimeError(f"{pod.name}'s sidecar exited with {pod.envoy.proc.returncode}: "
                               f"see {pod.envoy.log_path}")
    prometheus.check_running()


def http_ok(port: int, path: str) -> bool:
    try:
        return harness.http_get(port, path, timeout=2)[0] == 200
    except OSError:
        return False


def start_app(stack: contextlib.ExitStack, pod: Pod, workdir: Path):
    pod.app_port = harness.free_port()
    app = pod.app_process = stack.enter_context(
        Process(pod.app, pod.command(pod.app_port), workdir / f"{pod.app}.log"))

    def healthy():
        app.check_running()
        return http_ok(pod.app_port, "/healthz")

    harness.wait_until(healthy, timeout=10, what=f"{pod.app} app on port {pod.app_port}")


def start_sidecar(stack: contextlib.ExitStack, pod: Pod, workdir: Path):
    pod.envoy = stack.enter_context(harness.sidecar(workdir, CONTRACT, pod.app_port,
                                                    node_metadata=pod.node_metadata()))
    status, _ = pod.envoy.request("GET", "/healthz", timeout=5)
    if status != 200:
        raise RuntimeError(f"GET /healthz through {pod.name}'s sidecar answered {status}")


# ---------------------------------------------------------------- Prometheus

def prometheus_config(pods: list) -> dict:
    """A `kubernetes-pods`-like job: the static labels are what its relabelling adds per pod."""
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": "kubernetes-pods",
            "metrics_path": "/stats/prometheus",
            "scrape_interval": "1s",
            "static_configs": [
                {"targets": [f"127.0.0.1:{pod.envoy.admin_port}"],
                 "labels": {"namespace": NAMESPACE, "pod": pod.name}}
                for pod in pods],
        }],
    }


def start_prometheus(stack: contextlib.ExitStack, pods: list, workdir: Path) -> tuple[int, Process]:
    port = harness.free_port()
    config = workdir / "prometheus.yml"
    config.write_text(json.dumps(prometheus_config(pods), indent=2))  # JSON is valid YAML
    prom = stack.enter_context(Process("prometheus", [
        str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], workdir / "prometheus.log"))

    def ready():
        prom.check_running()
        return http_ok(port, "/-/ready")

    harness.wait_until(ready, timeout=20, interval=0.2, what=f"prometheus on port {port}")

    def all_targets_up():
        prom.check_running()
        up = {r["metric"].get("pod"): r["value"][1] for r in promql(port, 'up{job="kubernetes-pods"}')}
        return all(up.get(pod.name) == "1" for pod in pods) and up

    harness.wait_until(all_targets_up, timeout=20, interval=0.25, what="both targets up == 1")
    return port, prom


def promql(port: int, query: str, at: float | None = None) -> list:
    params = {"query": query}
    if at is not None:
        params["time"] = f"{at:.3f}"
    status, body = harness.http_get(port, "/api/v1/query?" + urllib.parse.urlencode(params))
    answer = json.loads(body)
    if status != 200 or answer.get("status") != "success":
        raise RuntimeError(f"query {query!r} failed ({status}): {body[:500]!r}")
    return answer["data"]["result"]


def promql_value(port: int, query: str, at: float) -> float | None:
    result = promql(port, query, at)
    if len(result) != 1:
        return None
    value = float(result[0]["value"][1])
    return value if value == value else None  # NaN: no data


# ---------------------------------------------------------------- load

def send_one(pod: Pod, rng: random.Random):
    method, path, body = pod.next_request(rng)
    headers = {"content-type": "application/json"} if body else {}
    started = time.perf_counter()
    try:
        status, _ = harness.http_request(pod.envoy.port, method, path, headers=headers, body=body, timeout=5)
    except OSError:
        status = 0
    pod.results.append(Result(time.time(), (time.perf_counter() - started) * 1000, status))


def drive(pod: Pod, pool: ThreadPoolExecutor, start: float, stop: threading.Event):
    """Open-loop load: one request every 1/rate seconds, whatever the response times are."""
    rng = random.Random(pod.name)
    for n in range(int(LOAD_SECONDS * pod.rate)):
        delay = start + n / pod.rate - time.monotonic()
        if stop.wait(max(delay, 0)):
            return
        pool.submit(send_one, pod, rng)


def run_load(pods: list):
    stop = threading.Event()
    start = time.monotonic() + 0.1
    with ThreadPoolExecutor(max_workers=64, thread_name_prefix="client") as pool:
        drivers = [threading.Thread(target=drive, args=(pod, pool, start, stop), daemon=True) for pod in pods]
        try:
            for thread in drivers:
                thread.start()
            for thread in drivers:
                while thread.is_alive():
                    thread.join(timeout=0.5)
        except BaseException:  # interrupted: stop sending, drop what is queued, wait for the rest
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise


# ---------------------------------------------------------------- numbers

def percentile(values: list, q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)  # nearest rank
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def client_numbers(pod: Pod, window_end: float) -> tuple[float, float | None]:
    """QPS and p95 the client saw for responses completed inside the query's window."""
    inside = [r for r in pod.results if window_end - WINDOW_SECONDS < r.end <= window_end]
    return len(inside) / WINDOW_SECONDS, percentile([r.latency_ms for r in inside], 0.95)


def relative_error(measured: float | None, expected: float | None) -> float:
    """Signed; infinite when there is nothing to compare."""
    if measured is None or not expected:
        return float("inf")
    return (measured - expected) / expected


def fmt(value: float | None, digits=1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------- report

def print_queries(pods: list, at: float):
    print(f"\nQueries an HPA adapter would run (prometheus-adapter style), evaluated at "
          f"time={at:.3f} ({time.strftime('%H:%M:%S', time.localtime(at))}), "
          f"a {WINDOW_SECONDS} s window inside the load:")
    for pod in pods:
        print(f"  {QPS_QUERY.format(pod=pod.name)}")
        print(f"  {P95_QUERY.format(pod=pod.name)}")


def report(pods: list, prom_port: int, at: float) -> list:
    """Prints the per-pod table and returns the failed checks."""
    failures = []
    rows = [("pod", "app", "QPS (Prometheus)", "QPS (client sent)", "diff", "p95 ms (Prometheus)",
             "p95 ms (client)")]
    for pod in pods:
        qps = promql_value(prom_port, QPS_QUERY.format(pod=pod.name), at)
        p95 = promql_value(prom_port, P95_QUERY.format(pod=pod.name), at)
        client_qps, client_p95 = client_numbers(pod, at)
        qps_error = relative_error(qps, client_qps)
        rows.append((pod.name, f"{pod.app} ({pod.language})", fmt(qps, 2), fmt(client_qps, 2),
                     f"{qps_error * 100:+.1f}%" if qps is not None else "n/a", fmt(p95), fmt(client_p95)))
        if abs(qps_error) > MAX_QPS_ERROR:
            failures.append(f"{pod.name}: QPS from Prometheus {fmt(qps, 2)} vs {client_qps:.2f} sent "
                            f"(more than {MAX_QPS_ERROR:.0%} off)")
        if abs(relative_error(p95, client_p95)) > MAX_P95_ERROR:
            failures.append(f"{pod.name}: p95 from Prometheus {fmt(p95)} ms vs {fmt(client_p95)} ms "
                            f"seen by the client (more than {MAX_P95_ERROR:.0%} off)")
    print()
    print_table(rows)
    return failures


def print_table(rows: list):
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  " + "  ".join(str(cell).ljust(w) if i < 2 else str(cell).rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def print_routes(prom_port: int, at: float):
    print(f"\nPer route, as Prometheus stores it:\n  {ROUTES_QUERY}")
    result = promql(prom_port, ROUTES_QUERY, at)
    rows = [("pod", "http_route", "status", "req/s")]
    for r in sorted(result, key=lambda r: (r["metric"].get("pod", ""), -float(r["value"][1]))):
        m = r["metric"]
        rows.append((m.get("pod", ""), m.get("http_route", ""), m.get("http_response_status_code", ""),
                     f"{float(r['value'][1]):.2f}"))
    print_table(rows)


def print_sample_series(pod: Pod, prom_port: int, at: float):
    """A few raw lines from the sidecar, then one series as stored in Prometheus."""
    _, body = harness.http_get(pod.envoy.admin_port, "/stats/prometheus")
    wanted = [("http_server_requests_total{", "", 3),
              ("http_server_request_duration_milliseconds_bucket{", 'le="100"}', 1),
              ("http_server_request_duration_milliseconds_count{", "", 1),
              ("http_server_active_requests{", "", 1),
              ("metricpact_contract_info{", "", 1)]
    lines = body.decode().splitlines()
    print(f"\nSample series from {pod.name}'s sidecar (GET :{pod.envoy.admin_port}/stats/prometheus):")
    for prefix, infix, count in wanted:
        for line in [line for line in lines if line.startswith(prefix) and infix in line][:count]:
            print(f"  {line}")
    result = promql(prom_port, f'topk(1, http_server_requests_total{{pod="{pod.name}"}})', at)
    if result:
        labels = ", ".join(f'{k}="{v}"' for k, v in sorted(result[0]["metric"].items()) if k != "__name__")
        print("The busiest counter series in Prometheus, with the target labels the scrape job added:\n"
              f"  http_server_requests_total{{{labels}}}")


def check_labels(pod: Pod) -> list:
    """Every request series must carry the pod's identity from the node metadata."""
    expo = pod.envoy.scrape()
    series = expo.series("http_server_requests_total")
    expected = {"k8s_pod_name": pod.name, "k8s_namespace_name": NAMESPACE, "service_name": pod.app}
    if not series:
        return [f"{pod.name}: no http_server_requests_total series on the sidecar"]
    wrong = [s.labels for s in series if any(s.labels.get(k) != v for k, v in expected.items())]
    return [f"{pod.name}: series without the pod's identity labels: {wrong[:2]}"] if wrong else []


# ---------------------------------------------------------------- main

def _on_alarm(_signum, _frame):
    raise TimeLimitReached(f"the demo took longer than {TIME_LIMIT_SECONDS} s")


def _on_sigterm(_signum, _frame):
    raise Terminated()


def preflight():
    missing = [str(p) for p in (harness.CLI, harness.WASM, harness.ENVOY, PROMETHEUS, Path(NODE))
               if not Path(p).exists()]
    if missing:
        raise RuntimeError("missing: " + ", ".join(missing) + " (run `make build`, or set METRICPACT_BIN)")


def demo(workdir: Path) -> list:
    preflight()
    harness.run_cli("check", str(CONTRACT))
    plugin_config, _ = harness.compile_contract(CONTRACT)
    contract = json.loads(plugin_config)["contract"]
    print(f"contract    {CONTRACT.relative_to(ROOT)}: {contract['name']} {contract['version']} "
          f"(hash {contract['hash']}), checked and compiled by {harness.CLI}")

    with contextlib.ExitStack() as stack:
        for pod in PODS:
            start_app(stack, pod, workdir)
            start_sidecar(stack, pod, workdir)
            print(f"pod         {pod.name:<24} {pod.app} ({pod.language}) on :{pod.app_port}, "
                  f"sidecar listener :{pod.envoy.port}, admin :{pod.envoy.admin_port}")
        prom_port, prometheus = start_prometheus(stack, PODS, workdir)
        print(f"prometheus  :{prom_port}, job kubernetes-pods scraping /stats/prometheus every 1s, "
              f"{len(PODS)}/{len(PODS)} targets up")

        rates = ", ".join(f"{pod.app} {pod.rate:g} req/s" for pod in PODS)
        print(f"load        {LOAD_SECONDS} s of steady open-loop traffic: {rates} ...")
        load_start = time.time()
        run_load(PODS)
        check_still_running(PODS, prometheus)
        for pod in PODS:
            answered_5xx = sum(1 for r in pod.results if r.status >= 500)
            no_response = sum(1 for r in pod.results if r.status == 0)
            print(f"            {pod.app}: {len(pod.results)} requests sent, {answered_5xx} answered 5xx, "
                  f"{no_response} without a response")

        at = load_start + LOAD_SECONDS - QUERY_LAG_SECONDS
        time.sleep(max(0.0, at + 2.5 - time.time()))  # let the last scrapes before `at` land
        print_queries(PODS, at)
        failures = report(PODS, prom_port, at)
        print_routes(prom_port, at)
        print_sample_series(PODS[0], prom_port, at)
        for pod in PODS:
            failures += check_labels(pod)
        return failures


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(TIME_LIMIT_SECONDS)
    print(__doc__.splitlines()[0] + "\n")
    workdir = Path(tempfile.mkdtemp(prefix="metricpact-demo-"))
    keep_logs = False
    try:
        failures = demo(workdir)
        keep_logs = bool(failures)
    except (KeyboardInterrupt, Terminated) as exc:
        print("\ninterrupted: everything started was stopped", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:  # report any failure as a failed demo, with the logs kept
        keep_logs = any(workdir.iterdir())
        print(f"\nFAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        if keep_logs:
            print(f"logs: {workdir}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        if not keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)

    if failures:
        print("\nFAILED checks:", *failures, sep="\n  ")
        print(f"logs: {workdir}")
        return 1
    print(f"\nOK: Prometheus' per-pod QPS is within {MAX_QPS_ERROR:.0%} and its p95 within "
          f"{MAX_P95_ERROR:.0%} of what the client measured, for both apps, with one contract and one query.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
