"""An "orders" service shaped like a Spring Boot app with Micrometer's Prometheus registry: the
traffic on one port, the metrics on a separate management port at /actuator/prometheus, named and
labelled the way Micrometer names them (`http_server_requests_seconds` as a summary with
`exception`, `method`, `outcome`, `status`, `uri` -- the route template --, its `_max` gauge, a
business counter `orders_created_total`, JVM and process noise). The exposition is produced by
the real `prometheus_client` library (no JVM here), with `_created` series off as Micrometer
has none. It is the flagship contract's app (contracts/rest-api.yaml, whose exposition section
renames all of it).

Routes (traffic port):
    GET  /api/v1/orders                 list (http_server_requests_seconds{uri="/api/v1/orders"})
    GET  /api/v1/orders/{uuid}          one order (uri="/api/v1/orders/{orderId}")
    POST /api/v1/orders                 create: orders_created_total +1, status 201
    GET  /actuator/health               liveness (counted too, uri="/actuator/health", as Spring does)
Anything else: 404, uri="UNKNOWN" (Micrometer's value for unmatched requests).
Metrics port: GET /actuator/prometheus.

Usage: orders_app.py --port N --metrics-port M [--delay-ms MS]     (binds 127.0.0.1 only)
    --delay-ms MS   every /api request takes MS ms (a known latency for histogram tests)
"""

import argparse
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Summary
from prometheus_client.exposition import generate_latest

prometheus_client.disable_created_metrics()
REGISTRY = CollectorRegistry()
LABELS = ["exception", "method", "outcome", "status", "uri"]
REQUESTS = Summary("http_server_requests_seconds", "", LABELS, registry=REGISTRY)
REQUESTS_MAX = Gauge("http_server_requests_seconds_max", "", LABELS, registry=REGISTRY)
ORDERS_CREATED = Counter("orders_created", "Orders created", registry=REGISTRY)
JVM_MEMORY = Gauge("jvm_memory_used_bytes", "The amount of used memory", ["area", "id"], registry=REGISTRY)
UPTIME = Gauge("process_uptime_seconds", "The uptime of the Java virtual machine", registry=REGISTRY)
STARTED = time.monotonic()
JVM_MEMORY.labels(area="heap", id="G1 Eden Space").set(25165824)
JVM_MEMORY.labels(area="nonheap", id="Metaspace").set(41943040)

ORDER = re.compile(r"^/api/v1/orders/[0-9a-f-]{36}$")
DELAY_SECONDS = 0.0
LOCK = threading.Lock()
MAXIMA = {}  # label values -> the largest duration seen (Micrometer's _max; it decays, this does not)


def outcome(status: int) -> str:
    return {2: "SUCCESS", 3: "REDIRECTION", 4: "CLIENT_ERROR", 5: "SERVER_ERROR"}.get(status // 100, "UNKNOWN")


def record(method: str, status: int, uri: str, seconds: float):
    labels = {"exception": "none", "method": method, "outcome": outcome(status), "status": str(status), "uri": uri}
    REQUESTS.labels(**labels).observe(seconds)
    key = tuple(labels.values())
    with LOCK:
        MAXIMA[key] = max(MAXIMA.get(key, 0.0), seconds)
        REQUESTS_MAX.labels(**labels).set(MAXIMA[key])


class Traffic(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: without TCP_NODELAY the second waits for the
    # proxy's delayed ACK (~40 ms), which would be measured as the app's latency.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def reply(self, status: int, body: bytes, uri: str, started: float):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        record(self.command, status, uri, time.monotonic() - started)

    def do_GET(self):
        started = time.monotonic()
        path = self.path.split("?", 1)[0]
        if path == "/actuator/health":
            return self.reply(200, b'{"status":"UP"}\n', "/actuator/health", started)
        if path == "/api/v1/orders":
            time.sleep(DELAY_SECONDS)
            return self.reply(200, b"[]\n", "/api/v1/orders", started)
        if ORDER.match(path):
            time.sleep(DELAY_SECONDS)
            return self.reply(200, b'{"id":"%s"}\n' % path.rsplit("/", 1)[1].encode(), "/api/v1/orders/{orderId}", started)
        self.reply(404, b'{"error":"Not Found"}\n', "UNKNOWN", started)

    def do_POST(self):
        started = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.split("?", 1)[0] == "/api/v1/orders":
            time.sleep(DELAY_SECONDS)
            ORDERS_CREATED.inc()
            return self.reply(201, b'{"created":true}\n', "/api/v1/orders", started)
        self.reply(404, b'{"error":"Not Found"}\n', "UNKNOWN", started)


class Management(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.split("?", 1)[0] != "/actuator/prometheus":
            body, status, content_type = b'{"error":"Not Found"}\n', 404, "application/json"
        else:
            UPTIME.set(time.monotonic() - STARTED)
            # Micrometer's registry answers text 0.0.4 to Prometheus (this app: always).
            body, status, content_type = generate_latest(REGISTRY), 200, "text/plain; version=0.0.4; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(port: int, handler) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main():
    global DELAY_SECONDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    DELAY_SECONDS = args.delay_ms / 1000
    servers = [serve(args.port, Traffic), serve(args.metrics_port, Management)]
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
