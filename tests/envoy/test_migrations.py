"""Migrations in a real Envoy: during a declared rename the sidecar emits the old and the new
traffic metric and label names with identical values, the app-exposition rewrite writes a
migrated family under both names, and a migration past its sunset is no longer emitted."""

import json
import subprocess

import harness
from exposition_support import Scripted, ScriptedUpstream, scrape

REQUESTS_NEW = "http_requests_total"
REQUESTS_OLD = "http_server_requests_total"
DURATION = "http_server_request_duration_milliseconds"

CONTRACT = """
format: metricpact/v1
name: orders
version: 2.0.0
metrics:
  requests:
    name: http_requests_total
labels:
  - name: http_request_method
    from: request.method
  - name: http_route
    from: request.route
  - name: http_response_status_code
    from: response.status_code
  - name: k8s_pod_name
    from: node.NAME
routes:
  rules:
    - regex: '/orders/[0-9]+'
      template: /orders/{id}
exposition:
  rename_metrics:
    - from: orders_placed_total
      to: shop_orders_placed_total
  rename_labels:
    - from: pay_method
      to: payment_method
migrations:
  - metric: http_server_requests_total
    renamed_to: http_requests_total
    sunset: 2099-01-01
  - label: endpoint
    renamed_to: http_route
    sunset: 2099-01-01
  - metric: orders_placed_total
    renamed_to: shop_orders_placed_total
    sunset: 2099-01-01
  - label: pay_method
    renamed_to: payment_method
    sunset: 2099-01-01
"""

APP_METRICS = b"""# HELP orders_placed_total Orders placed
# TYPE orders_placed_total counter
orders_placed_total{pay_method="card"} 41
orders_placed_total{pay_method="invoice"} 3
# TYPE queue_depth gauge
queue_depth 7
"""

REWRITTEN = """# HELP shop_orders_placed_total Orders placed
# TYPE shop_orders_placed_total counter
shop_orders_placed_total{payment_method="card",pay_method="card"} 41
shop_orders_placed_total{payment_method="invoice",pay_method="invoice"} 3
# HELP orders_placed_total Orders placed
# TYPE orders_placed_total counter
orders_placed_total{payment_method="card",pay_method="card"} 41
orders_placed_total{payment_method="invoice",pay_method="invoice"} 3
# TYPE queue_depth gauge
queue_depth 7
"""

POD = harness.ISTIO_NODE_METADATA["NAME"]


def scrape_when(envoy, ready):
    """The sidecar's exposition once `ready(exposition)` holds."""
    def attempt():
        expo = envoy.scrape()
        return expo if ready(expo) else None
    return harness.wait_until(attempt, what="the expected series")


def traffic(envoy):
    for path in ["/orders/1", "/orders/2", "/orders/3?x=1", "/other"]:
        assert envoy.request("GET", path)[0] == 200
    assert envoy.request("POST", "/orders/9")[0] == 200


def test_old_and_new_names_carry_identical_series(workdir):
    contract = harness.write_contract(workdir, CONTRACT)
    with ScriptedUpstream() as up, harness.sidecar(workdir, contract, up.port) as envoy:
        up.answers["/orders/1"] = up.answers["/orders/2"] = up.answers["/orders/3"] = Scripted(b"ok")
        up.answers["/orders/9"] = up.answers["/other"] = Scripted(b"ok")
        traffic(envoy)
        expo = scrape_when(envoy, lambda e: sum(s.value for s in e.series(REQUESTS_NEW)) == 5)
        def table(name):
            return sorted((tuple(sorted(s.labels.items())), s.value) for s in expo.series(name))
        def series(method, route, value):
            labels = {"http_request_method": method, "http_response_status_code": "200", "http_route": route,
                      "k8s_pod_name": POD, "endpoint": route}
            return tuple(sorted(labels.items())), value
        expected = sorted([series("GET", "/orders/{id}", 3.0), series("GET", "_OTHER", 1.0), series("POST", "/orders/{id}", 1.0)])
        assert table(REQUESTS_NEW) == expected
        assert table(REQUESTS_OLD) == expected
        # The histogram was not renamed: one name, but it carries the old label too.
        expo = scrape_when(envoy, lambda e: sum(s.value for s in e.series(DURATION + "_count")) == 5)
        counts = {}
        for s in expo.series(DURATION + "_count"):
            counts[s.labels["endpoint"]] = counts.get(s.labels["endpoint"], 0) + s.value
        assert counts == {"/orders/{id}": 4.0, "_OTHER": 1.0}
        assert "Wasm VM failed" not in envoy.log_text() and "panicked" not in envoy.log_text()


def test_the_rewrite_writes_migrated_families_under_both_names(workdir):
    contract = harness.write_contract(workdir, CONTRACT)
    with ScriptedUpstream() as up, harness.sidecar(workdir, contract, up.port) as envoy:
        up.answers["/metrics"] = Scripted(APP_METRICS, headers=[("Content-Type", "text/plain; version=0.0.4")])
        resp = scrape(envoy.port)
        assert resp.status == 200
        assert resp.text() == REWRITTEN
        # The CLI writes the same bytes (same code, same contract).
        cli = subprocess.run([str(harness.CLI), "rewrite", "--contract", str(contract), "-"],
                                     input=APP_METRICS, capture_output=True, timeout=30)
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.decode() == REWRITTEN


def test_a_migration_past_its_sunset_is_not_emitted(workdir):
    contract = harness.write_contract(workdir, CONTRACT)
    plugin_config, stats = harness.compile_contract(contract)
    config = json.loads(plugin_config)
    # A sidecar still running this configuration after the sunset (check refuses to compile it
    # by then): the filter ends the migrations itself.
    for migration in config["migrations"] + config["exposition"]["migrations"]:
        migration["sunset_unix"] = 1_000_000_000
    with ScriptedUpstream() as up:
        envoy_config = harness.bootstrap(
            listener_port=harness.free_port(), admin_port=harness.free_port(), upstream_port=up.port,
            http_filters=[harness.wasm_http_filter(json.dumps(config))], stats_config=stats,
            node_metadata=harness.ISTIO_NODE_METADATA)
        with harness.Envoy(envoy_config, workdir) as envoy:
            up.answers["/orders/1"] = Scripted(b"ok")
            up.answers["/metrics"] = Scripted(APP_METRICS, headers=[("Content-Type", "text/plain; version=0.0.4")])
            assert envoy.request("GET", "/orders/1")[0] == 200
            expo = scrape_when(envoy, lambda e: e.series(REQUESTS_NEW))
            assert [s.labels for s in expo.series(REQUESTS_NEW)] == [
                {"http_request_method": "GET", "http_route": "/orders/{id}", "http_response_status_code": "200", "k8s_pod_name": POD}]
            assert expo.series(REQUESTS_OLD) == []
            assert scrape(envoy.port).text() == (
                "# HELP shop_orders_placed_total Orders placed\n# TYPE shop_orders_placed_total counter\n"
                "shop_orders_placed_total{payment_method=\"card\"} 41\nshop_orders_placed_total{payment_method=\"invoice\"} 3\n"
                "# TYPE queue_depth gauge\nqueue_depth 7\n")
            assert "a migration reached its sunset" in envoy.log_text()
