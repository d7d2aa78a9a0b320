"""Helpers for the exposition-rewrite tests (test_exposition.py) and the rewrite benchmark:

- the real metrics apps of tests/apps/ (prometheus_client, prom-client, OTel exporter) started on
  free ports, each behind its own real Envoy sidecar running metricpact.wasm;
- `ScriptedUpstream`: an HTTP server whose answers the test scripts byte for byte (status, headers,
  body, framing: Content-Length, chunked or close-delimited) and which records every request it got;
- `scrape()`: a GET that returns status, headers and the raw (never decoded) body;
- `self_metrics()`: metricpact's exposition counters from Envoy's admin endpoint;
- `ScrapingPrometheus`: a real Prometheus scraping given targets on any metrics path.

Every process started here is stopped again (context managers)."""

from __future__ import annotations

import http.client
import http.server
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import harness
from istio import PROMETHEUS, PROMTOOL, Process, start_app  # noqa: F401  (re-exported)

CONTRACTS = harness.ROOT / "tests/data/contracts"
SAMPLES = harness.ROOT / "tests/data/expositions"
APPS_DIR = harness.ROOT / "tests/apps"
PYTHON = str(harness.ROOT / ".venv/bin/python") if (harness.ROOT / ".venv/bin/python").exists() else sys.executable

APPS = {
    "python": [PYTHON, APPS_DIR / "metrics_python.py"],
    "node": ["node", APPS_DIR / "metrics_node.js"],
    "otel": [PYTHON, APPS_DIR / "metrics_otel.py"],
}

# What the filter writes (src/exposition/mod.rs).
TEXT_CT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CT = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# What the filter asks the app for on every scrape, whatever the scraper asked (SCRAPE_ACCEPT in
# src/exposition/mod.rs): the response's Content-Type must be decided before the body is seen.
SCRAPE_ACCEPT = "text/plain;version=0.0.4"

# Accept headers scrapers really send.
TEXT_ACCEPT = "text/plain;version=0.0.4"      # a text-only scraper (Prometheus 3, scrape_protocols: [PrometheusText0.0.4])
OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0"
PROMETHEUS2_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                      "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")   # Prometheus 2.42 (captured, see README)
PROTOBUF_ACCEPT = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"
# A scraper that asks for protobuf first, then the text format only (no OpenMetrics).
PROTOBUF_THEN_TEXT_ACCEPT = f"{PROTOBUF_ACCEPT};q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"

OUTCOMES = ("rewritten", "unparsable", "too_large", "compressed", "unsupported_format")
SCRAPES = "metricpact_exposition_scrapes_total"
MISSING = "metricpact_exposition_missing_required_total"


# ---------------------------------------------------------------- HTTP

@dataclass
class Response:
    status: int
    headers: list          # [(lowercased name, value)] in order received
    body: bytes            # as received (chunked framing removed, never decompressed)

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name.lower()]
        assert len(values) <= 1, f"{len(values)} {name} headers: {values}"
        return values[0] if values else None

    def text(self) -> str:
        return self.body.decode("utf-8")


def scrape(port: int, path: str = "/metrics", *, method: str = "GET", accept: str | None = PROMETHEUS2_ACCEPT,
           accept_encoding: str | None = "gzip", headers: dict | None = None, body: bytes | None = None,
           timeout: float = 15) -> Response:
    """One request as a scraper sends it (Prometheus 2.42's Accept and Accept-Encoding by default)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        if accept is not None:
            conn.putheader("Accept", accept)
        if accept_encoding is not None:
            conn.putheader("Accept-Encoding", accept_encoding)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, [(n.lower(), v) for n, v in resp.getheaders()], data)
    finally:
        conn.close()


# ---------------------------------------------------------------- a scripted upstream

@dataclass
class Scripted:
    """One scripted answer. `framing`: "length" (Content-Length), "chunked" (Transfer-Encoding:
    chunked, `chunk` bytes per chunk), "close" (no length; the body ends when the connection
    closes) or "none" (no length, no body: 204, 304)."""
    body: bytes = b""
    status: int = 200
    headers: list = field(default_factory=list)
    framing: str = "length"
    chunk: int = 16384


@dataclass
class Received:
    method: str
    path: str
    headers: dict          # lowercased names
    body: bytes


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _serve(self):
        upstream: ScriptedUpstream = self.server.upstream
        length = int(self.headers.get("content-length") or 0)
        req_body = self.rfile.read(length) if length else b""
        upstream.received.append(Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                          req_body))
        answer = upstream.answers.get(self.path) or upstream.answers.get(self.path.split("?")[0])
        if answer is None:
            answer = Scripted(b"not scripted\n", status=404, headers=[("Content-Type", "text/plain")])
        head = [f"HTTP/1.1 {answer.status} {http.HTTPStatus(answer.status).phrase}"]
        head += [f"{n}: {v}" for n, v in answer.headers]
        if answer.framing == "length":
            head.append(f"Content-Length: {len(answer.body)}")
        elif answer.framing == "chunked":
            head.append("Transfer-Encoding: chunked")
        elif answer.framing == "none":      # 204 / 304: no body, no length
            pass
        elif answer.framing == "close":
            head.append("Connection: close")
            self.close_connection = True
        else:
            raise ValueError(answer.framing)
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if self.command == "HEAD":
            return
        if answer.framing == "chunked":
            for i in range(0, len(answer.body), answer.chunk):
                piece = answer.body[i:i + answer.chunk]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.wfile.write(answer.body)
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _serve


class ScriptedUpstream(harness.LocalHTTPServer):
    """`up.answers[path] = Scripted(...)` (path with or without the query); `up.received` lists
    every request in arrival order."""

    def __init__(self):
        self.answers: dict[str, Scripted] = {}
        self.received: list[Received] = []
        super().__init__(_ScriptedHandler)
        self.server.upstream = self

    def last(self, path: str) -> Received:
        """The last request for exactly `path` (with its query)."""
        found = [r for r in self.received if r.path == path]
        assert found, f"the upstream got no request for {path}: {[r.path for r in self.received]}"
        return found[-1]


# ---------------------------------------------------------------- metricpact's self-metrics

def self_metrics(envoy: harness.Envoy) -> dict:
    """{result: count} of metricpact_exposition_scrapes_total and {("missing", metric): count}."""
    expo = envoy.scrape()
    out = {r: expo.total(SCRAPES, metricpact_result=r) for r in OUTCOMES}
    for s in expo.series(MISSING):
        out[("missing", s.labels.get("metricpact_metric"))] = s.value
    return out


def delta(before: dict, after: dict) -> dict:
    """The counters that changed, with their increments."""
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)
            if after.get(k, 0) != before.get(k, 0)}


# ---------------------------------------------------------------- Prometheus

@dataclass
class Target:
    job: str
    address: str           # host:port (the sidecar's listener)
    metrics_path: str = "/metrics"
    labels: dict = field(default_factory=dict)


class ScrapingPrometheus(Process):
    """A real Prometheus scraping each target every second on its own metrics path (one job per
    target), with the target labels the kubernetes-pods job would add."""

    def __init__(self, workdir: Path, targets: list, extra_args=()):
        self.port = harness.free_port()
        self.targets = targets
        workdir = Path(workdir)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": t.job,
                "metrics_path": t.metrics_path,
                "scrape_interval": "1s",
                "static_configs": [{"targets": [t.address], "labels": t.labels}],
            } for t in targets],
        }
        path = workdir / f"prometheus-{self.port}.yml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        super().__init__("prometheus", [
            PROMETHEUS, f"--config.file={path}", f"--storage.tsdb.path={workdir / f'tsdb-{self.port}'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn", *extra_args],
            workdir / f"prometheus-{self.port}.log")

    def __enter__(self):
        super().__enter__()
        try:
            harness.wait_until(self._ready, timeout=30, interval=0.2, what=f"prometheus on port {self.port}")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _ready(self):
        self.check_running()
        try:
            return harness.http_get(self.port, "/-/ready", timeout=2)[0] == 200
        except OSError:
            return False

    def api(self, path: str, params) -> dict:
        import urllib.parse
        status, body = harness.http_get(self.port, f"{path}?{urllib.parse.urlencode(params)}")
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise RuntimeError(f"{path} {params} failed ({status}): {body[:500]!r}")
        return answer["data"]

    def query(self, query: str) -> list:
        return self.api("/api/v1/query", {"query": query})["result"]

    def targets_health(self) -> dict:
        """job -> (health, lastError) of each active target."""
        data = self.api("/api/v1/targets", {"state": "active"})
        return {t["labels"]["job"]: (t["health"], t["lastError"]) for t in data["activeTargets"]}

    def wait_scraped(self, timeout=20) -> dict:
        """Waits until every target has been scraped at least once; returns targets_health()."""
        def all_scraped():
            health = self.targets_health()
            return len(health) == len(self.targets) and all(h != "unknown" for h, _ in health.values()) and health
        return harness.wait_until(all_scraped, timeout=timeout, interval=0.25, what="every target scraped")
