"""A "checkout" service instrumented with the real OpenTelemetry Python SDK and exposed through the real
OpenTelemetry Prometheus exporter (`opentelemetry-exporter-prometheus`'s PrometheusMetricReader), the
way OTel-instrumented Python apps expose Prometheus metrics: instruments named after the semantic
conventions (`http.server.request.duration`, unit "s"), translated by the exporter into Prometheus names
(`http_server_request_duration_seconds`), with `otel_scope_*` labels on every series and a `target_info`
metric carrying the resource attributes.

The exporter has no HTTP server of its own: it registers a collector in prometheus_client's default
REGISTRY and its documentation serves that registry with prometheus_client's `start_http_server`, which
also exposes prometheus_client's default collectors (process_*, python_gc_*, python_info). This app does
the same, with exactly the server `start_http_server` builds (wsgiref + prometheus_client's
`make_wsgi_app`: content negotiation via `choose_encoder`, gzip whenever Accept-Encoding allows it),
plus two app routes in front of it.

It is an input for metricpact's exposition rewrite. At startup it records a FIXED set of observations
so tests can assert exact numbers (see record_fixed_observations() and tests/data/expositions/README.md).
The resource is built with Resource.create(), so OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME in the
environment change target_info (the tests should not set them); service.instance.id is fixed
("checkout-0") because the SDK would otherwise add a random UUID per process.

Routes:
    GET /metrics    prometheus_client's make_wsgi_app() (the exporter's output; HEAD answers 405, as
                    with start_http_server)
    GET|POST /work  http.server.request.duration records exactly 0.01 with {http.request.method=<method>,
                    http.response.status_code=200, http.route=/work, url.scheme=http}
    GET /healthz    liveness; touches no metric
Anything else answers 404 (and touches no metric).

Usage: metrics_otel.py --port N      (binds 127.0.0.1 only, logs nothing)
"""

import argparse
import sys
from wsgiref.simple_server import make_server

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

# The semantic conventions' advisory buckets for http.server.request.duration (seconds).
DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]

# A label value with every character the text formats must escape (", \, newline) plus non-ASCII.
TRICKY_COUPON = 'upstream "inventory" said: C:\\queue\\full\nretry in 5s — café'

reader = PrometheusMetricReader()
provider = MeterProvider(
    resource=Resource.create(
        {
            "service.name": "checkout",
            # Fixed, like a pod name; without it the SDK adds a random UUID per process.
            "service.instance.id": "checkout-0",
            "service.namespace": "shop",
            "service.version": "2.3.1",
            "deployment.environment.name": "test",
        }
    ),
    metric_readers=[reader],
)
meter = provider.get_meter("checkout.http", "1.0.0")

request_duration = meter.create_histogram(
    "http.server.request.duration",
    unit="s",
    description="Duration of HTTP server requests.",
    explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
)
active_requests = meter.create_up_down_counter(
    "http.server.active_requests",
    unit="{request}",
    description="Number of active HTTP server requests.",
)
orders = meter.create_counter(
    "shop.orders",
    unit="{order}",
    description="Orders placed.",
)


def http_attrs(method, status, route):
    return {
        "http.request.method": method,
        "http.response.status_code": status,  # an int: the exporter prints it as "200"
        "http.route": route,
        "url.scheme": "http",
    }


def record_fixed_observations():
    """FIXED OBSERVATIONS: exactly these, once, at startup."""
    for seconds in (0.004, 0.02, 0.3):
        request_duration.record(seconds, http_attrs("GET", 200, "/api/items"))
    request_duration.record(0.05, http_attrs("POST", 201, "/api/items"))
    request_duration.record(0.012, http_attrs("GET", 404, "/api/items/{id}"))

    active = {"http.request.method": "GET", "url.scheme": "http"}
    active_requests.add(3, active)
    active_requests.add(-1, active)  # -> 2

    for _ in range(3):
        orders.add(1, {"payment.method": "card"})
    orders.add(2, {"payment.method": "voucher"})
    orders.add(1, {"payment.method": "voucher", "shop.coupon": TRICKY_COUPON})


metrics_app = make_wsgi_app()  # serves the default REGISTRY, where the reader registered itself


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/metrics":
        return metrics_app(environ, start_response)
    if path == "/work":
        request_duration.record(0.01, http_attrs(environ.get("REQUEST_METHOD", "GET"), 200, "/work"))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"ok":true}\n']
    if path == "/healthz":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]
    start_response("404 Not Found", [("Content-Type", "application/json")])
    return [b'{"error":"not found"}\n']


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()

    record_fixed_observations()
    # What prometheus_client.start_http_server(port, addr) builds, with `app` instead of make_wsgi_app().
    httpd = make_server("127.0.0.1", args.port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
