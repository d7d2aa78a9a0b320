"""A service that counts its own requests with the real `prometheus_client` library, the way apps
do: `app_requests_total{code}` incremented by the handler, served on `/metrics` with the library's
own content negotiation and its default collectors (process_*, python_gc_*, python_info).

It is the app whose numbers metricpact's honesty cross-check judges against the sidecar's: honest
by default, or under-counting with `--drop-every N` (every Nth increment of each `code` is skipped:
N=10 drops exactly 10 % of each status code's requests, however they interleave).

Routes:
    GET /work        200, app_requests_total{code="200"} +1
    GET /fail        500, app_requests_total{code="500"} +1
    GET /healthz     200, counts nothing (a probe)
    GET /metrics     the exposition
Anything else answers 404 and counts nothing.

Usage: counting_app.py --port N [--drop-every N] [--legacy-names]     (binds 127.0.0.1 only)
    --legacy-names   also register metrics named the way older services often are, which break the
                     Prometheus naming rules: a camelCase histogram in milliseconds with a camelCase
                     label (`requestLatencyMs{userTier}`), a gauge named like a counter
                     (`queue_depth_total`), and a counter without HELP text.
"""

import argparse
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

REQUESTS = Counter("app_requests", "Requests the app handled, by status code.", ["code"])  # app_requests_total

DROP_EVERY = 0  # --drop-every
_seen: dict[str, int] = {}
_lock = threading.Lock()


def count(code: str):
    """Counts one request of `code`, unless this is one of the increments --drop-every skips."""
    with _lock:
        _seen[code] = _seen.get(code, 0) + 1
        if DROP_EVERY and _seen[code] % DROP_EVERY == 0:
            return
    REQUESTS.labels(code=code).inc()


def register_legacy_names():
    latency = Histogram("requestLatencyMs", "Request latency in milliseconds.", ["userTier"],
                        buckets=(5, 10, 50, 100, 500))
    latency.labels(userTier="gold").observe(12)
    Gauge("queue_depth_total", "Jobs waiting.").set(4)
    Counter("cache_evictions", "").inc(3)  # no HELP text


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Envoy's upstream connection pool expects
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # quiet
        pass

    def _send(self, status, body, content_type="text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept"))
            self._send(200, encoder(REGISTRY), content_type)
        elif path == "/work":
            count("200")
            self._send(200, b"done\n")
        elif path == "/fail":
            count("500")
            self._send(500, b"failed\n")
        elif path == "/healthz":
            self._send(200, b"ok\n")
        else:
            self._send(404, b"not found\n")


def main():
    global DROP_EVERY
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--drop-every", type=int, default=0)
    parser.add_argument("--legacy-names", action="store_true")
    args = parser.parse_args()
    DROP_EVERY = args.drop_every
    if args.legacy_names:
        register_legacy_names()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
