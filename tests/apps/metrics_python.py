"""An "items" service that exposes its own Prometheus metrics with the real `prometheus_client` library,
in the style Python apps use: the default registry with its default collectors (process_*, python_gc_*,
python_info), business metrics registered at import time, `/metrics` served with the library's own
content negotiation (`choose_encoder`: OpenMetrics 1.0.0 when the Accept header asks for
`application/openmetrics-text`, text 0.0.4 otherwise).

It is an input for metricpact's exposition rewrite. At startup it records a FIXED set of observations
so tests can assert exact numbers (see FIXED OBSERVATIONS below and tests/data/expositions/README.md).

Routes:
    GET /metrics      the exposition (prometheus_client's choose_encoder + its encoder)
    GET|POST /work    one request of "work": http_requests_total{method=<method>,code="200",handler="/work"} +1,
                      http_request_duration_seconds{handler="/work"} observes exactly 0.01
    GET|POST /pay     payment_processing_seconds observes exactly 0.25
    GET /healthz      liveness; touches no metric
Anything else answers 404 (and touches no metric).

Usage: metrics_python.py --port N [--content-type VALUE] [--gzip] [--delay-ms MS]   (binds 127.0.0.1 only, logs nothing)
    --content-type VALUE   send VALUE as /metrics' Content-Type instead of the negotiated one
                           (simulates broken apps: e.g. "text/plain"); "none" omits the header
    --gzip                 gzip /metrics (Content-Encoding: gzip) when the request's Accept-Encoding
                           allows it (prometheus_client's gzip_accepted)
    --delay-ms MS          /work answers after MS ms (what it records stays exactly 0.01 s)
"""

import argparse
import gzip
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info, Summary
from prometheus_client.exposition import choose_encoder, gzip_accepted

# --- business metrics, registered in the default registry next to the default collectors ---------

HTTP_REQUESTS = Counter(
    "http_requests",  # exposed as http_requests_total (+ http_requests_created)
    "Total HTTP requests handled by the app.",
    ["method", "code", "handler"],
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency in seconds.",
    ["handler"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1.0),  # + the implicit +Inf
)
PAYMENT = Summary("payment_processing_seconds", "Time spent processing a payment.")
INFLIGHT = Gauge("inflight_jobs", "Jobs currently being processed, per queue.", ["queue"])
BUILD = Info("app_build", "Build information.")  # exposed as app_build_info{...} 1
ERRORS = Counter(
    "app_errors",  # exposed as app_errors_total
    "Errors by reason (a label value that needs escaping: quote, backslash, newline, UTF-8).",
    ["reason"],
)

# A label value with every character the text formats must escape (", \, newline) plus non-ASCII.
TRICKY_REASON = 'upstream "inventory" said: C:\\queue\\full\nretry in 5s — café'


def record_fixed_observations():
    """FIXED OBSERVATIONS: exactly these, once, at startup."""
    for _ in range(3):
        HTTP_REQUESTS.labels(method="GET", code="200", handler="/api/items").inc()
    HTTP_REQUESTS.labels(method="POST", code="201", handler="/api/items").inc()
    HTTP_REQUESTS.labels(method="GET", code="500", handler="/api/items").inc(2)
    HTTP_REQUESTS.labels(method="GET", code="404", handler="/api/items/{id}").inc()

    for seconds in (0.004, 0.02, 0.3):
        HTTP_DURATION.labels(handler="/api/items").observe(seconds)
    HTTP_DURATION.labels(handler="/api/items/{id}").observe(0.075)

    PAYMENT.observe(0.5)
    PAYMENT.observe(1.25)

    INFLIGHT.labels(queue="emails").set(3)
    INFLIGHT.labels(queue="reports").inc()
    INFLIGHT.labels(queue="reports").inc()
    INFLIGHT.labels(queue="reports").dec()  # -> 1

    BUILD.info({"version": "1.4.2", "commit": "3f9c2ab", "branch": "main"})

    ERRORS.labels(reason=TRICKY_REASON).inc()


CONTENT_TYPE_OVERRIDE = None  # --content-type; "" means omit the header
GZIP = False  # --gzip
DELAY_SECONDS = 0.0  # --delay-ms


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Envoy's upstream connection pool expects
    # Headers and body leave in two writes: without TCP_NODELAY the second waits for the
    # proxy's delayed ACK (~40 ms), which would be measured as the app's latency.
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # quiet
        pass

    def _send(self, status, body, headers):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _metrics(self):
        encoder, content_type = choose_encoder(self.headers.get("Accept"))
        registry = REGISTRY
        params = parse_qs(urlparse(self.path).query)
        if "name[]" in params:
            registry = registry.restricted_registry(params["name[]"])
        body = encoder(registry)
        if CONTENT_TYPE_OVERRIDE is not None:
            content_type = CONTENT_TYPE_OVERRIDE
        headers = [("Content-Type", content_type)] if content_type else []
        if GZIP and gzip_accepted(self.headers.get("Accept-Encoding")):
            body = gzip.compress(body)
            headers.append(("Content-Encoding", "gzip"))
        self._send(200, body, headers)

    def _route(self):
        path = urlparse(self.path).path
        if path == "/metrics" and self.command in ("GET", "HEAD"):
            self._metrics()
        elif path == "/work":
            time.sleep(DELAY_SECONDS)
            HTTP_REQUESTS.labels(method=self.command, code="200", handler="/work").inc()
            HTTP_DURATION.labels(handler="/work").observe(0.01)
            self._send(200, b'{"ok":true}\n', [("Content-Type", "application/json")])
        elif path == "/pay":
            PAYMENT.observe(0.25)
            self._send(200, b'{"paid":true}\n', [("Content-Type", "application/json")])
        elif path == "/healthz":
            self._send(200, b"ok\n", [("Content-Type", "text/plain")])
        else:
            self._send(404, b'{"error":"not found"}\n', [("Content-Type", "application/json")])

    def do_GET(self):
        self._route()

    def do_HEAD(self):
        self._route()

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._route()


def main():
    global CONTENT_TYPE_OVERRIDE, GZIP, DELAY_SECONDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--content-type", metavar="VALUE", help='override /metrics\' Content-Type; "none" omits it')
    parser.add_argument("--gzip", action="store_true", help="gzip /metrics when Accept-Encoding allows it")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="answer /work after this many ms")
    args = parser.parse_args()
    DELAY_SECONDS = args.delay_ms / 1000
    if args.content_type is not None:
        CONTENT_TYPE_OVERRIDE = "" if args.content_type.lower() == "none" else args.content_type
    GZIP = args.gzip

    record_fixed_observations()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
