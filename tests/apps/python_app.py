"""A small "cart" service for the metricpact demo: stdlib-only Python, no metrics of its own.

Routes (JSON responses, each after a realistic random latency: 20-80 ms, ~8% of requests 120-250 ms):
    GET  /cart/{id}          the cart's contents
    POST /cart/{id}/items    add an item (JSON body); ~1% answer 503 (inventory service busy)
    GET  /healthz            liveness, no delay
Anything else answers 404.

Usage: python_app.py --port N [--delay-ms MS]     (binds 127.0.0.1 only)
    --delay-ms MS   every /cart request takes exactly MS ms instead of the random latency above
                    (tests use it to put a known latency into a known histogram bucket)
"""

import argparse
import json
import random
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CART = re.compile(r"^/cart/([A-Za-z0-9-]+)$")
CART_ITEMS = re.compile(r"^/cart/([A-Za-z0-9-]+)/items$")


FIXED_DELAY_MS = None  # set by --delay-ms


def think():
    """Sleeps like a service that talks to a database: mostly fast, sometimes slow."""
    if FIXED_DELAY_MS is not None:
        time.sleep(FIXED_DELAY_MS / 1000)
    elif random.random() < 0.08:
        time.sleep(random.uniform(0.120, 0.250))
    else:
        time.sleep(random.uniform(0.020, 0.080))


class CartHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Envoy's upstream connection pool expects
    # Headers and body leave in two writes: without TCP_NODELAY the second waits for the
    # proxy's delayed ACK (~40 ms), which would be measured as the app's latency.
    disable_nagle_algorithm = True
    server_version = "cart/1.0"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            return self.reply(200, {"status": "ok"})
        match = CART.match(path)
        if not match:
            return self.reply(404, {"error": "not found", "path": path})
        think()
        cart_id = match.group(1)
        items = [{"sku": f"sku-{random.randint(1, 500)}", "qty": random.randint(1, 3)}
                 for _ in range(random.randint(0, 4))]
        self.reply(200, {"cart": cart_id, "items": items})

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        body = self.read_body()
        match = CART_ITEMS.match(path)
        if not match:
            return self.reply(404, {"error": "not found", "path": path})
        think()
        if random.random() < 0.01:
            return self.reply(503, {"error": "inventory service busy"})
        try:
            item = json.loads(body or b"{}")
        except ValueError:
            return self.reply(400, {"error": "body is not JSON"})
        self.reply(201, {"cart": match.group(1), "added": item})

    def read_body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status: int, payload: dict):
        body = json.dumps(payload).encode() + b"\n"
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet: the sidecar does the measuring
        pass


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", nargs="?", type=int)
    parser.add_argument("--port", dest="port_opt", type=int)
    parser.add_argument("--delay-ms", type=float, default=None,
                        help="fixed latency of every /cart request, instead of the random one")
    args = parser.parse_args(argv)
    global FIXED_DELAY_MS
    FIXED_DELAY_MS = args.delay_ms
    port = args.port_opt or args.port
    if not port:
        parser.error("a port is required (--port N)")

    server = ThreadingHTTPServer(("127.0.0.1", port), CartHandler)
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
