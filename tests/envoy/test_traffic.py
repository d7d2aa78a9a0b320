"""The real metricpact.wasm in a real Envoy: requests through the listener are counted, timed
and tracked in flight, labelled per contract, and scraped from /stats/prometheus."""

import json
import threading
import time
from pathlib import Path

import pytest

from harness import ISTIO_NODE_METADATA, ROOT, Envoy, Route, bootstrap, compile_contract, free_port, raw_request, \
    sidecar, wait_until, wasm_http_filter, write_contract

DEFAULT_CONTRACT = ROOT / "contracts/http-server.yaml"
REQUESTS = "http_server_requests_total"
DURATION = "http_server_request_duration_milliseconds"
ACTIVE = "http_server_active_requests"

POD = {"k8s_pod_name": "cart-7d9f8b6c5-x2x8k", "k8s_namespace_name": "shop", "k8s_workload_name": "cart",
       "service_name": "cart"}
PLAIN = {"url_scheme": "http", "network_protocol_version": "1.1", **POD}

USERS_CONTRACT = """
format: metricpact/v1
name: users
version: 1.0.0
routes:
  rules:
    - regex: '/users/[0-9]+'
      template: /users/{id}
    - regex: '/users/[0-9]+/orders/(?P<kind>open|closed)'
      template: /users/{id}/orders/${kind}
    - exact: /healthz
"""


def expect_series(expo, name, labels, value):
    """Exactly one series of `name` has exactly `labels`, and its value is `value`."""
    matching = [s for s in expo.series(name) if s.labels == labels]
    assert len(matching) == 1, f"no single {name}{labels}; have:\n" + "\n".join(str(s.labels) for s in expo.series(name))
    assert matching[0].value == value, f"{name}{labels} = {matching[0].value}, expected {value}"


def series_labels(**overrides):
    """A traffic series' full label set; an empty value means the label is absent."""
    labels = {"http_request_method": "GET", "http_route": "_OTHER", "http_response_status_code": "200", **PLAIN}
    labels.update(overrides)
    return {k: v for k, v in labels.items() if v != ""}


@pytest.fixture
def users_sidecar(workdir, upstream):
    contract = write_contract(workdir, USERS_CONTRACT)
    routes = [Route("/dead", cluster="dead"), Route("/timeout", timeout="0.2s"), Route("/")]
    with sidecar(workdir, contract, upstream.port, routes=routes) as envoy:
        yield envoy


def test_counts_each_request_by_route_template_method_and_status(users_sidecar):
    envoy = users_sidecar
    for path in ["/users/1", "/users/22?tab=profile", "/users/333", "/users/4/orders/open", "/users/5/orders/open"]:
        assert envoy.request("GET", path)[0] == 200
    assert envoy.request("POST", "/users/7?status=201")[0] == 201
    assert envoy.request("GET", "/users/8?status=404")[0] == 404
    assert envoy.request("GET", "/healthz")[0] == 200
    assert envoy.request("GET", "/somewhere/else/42")[0] == 200
    assert envoy.request("PROPFIND", "/users/9")[0] == 200

    expo = envoy.scrape()
    expect_series(expo, REQUESTS, series_labels(http_route="/users/{id}"), 3)
    expect_series(expo, REQUESTS, series_labels(http_route="/users/{id}/orders/open"), 2)
    expect_series(expo, REQUESTS, series_labels(http_route="/users/{id}", http_request_method="POST",
                                                http_response_status_code="201"), 1)
    expect_series(expo, REQUESTS, series_labels(http_route="/users/{id}", http_response_status_code="404"), 1)
    expect_series(expo, REQUESTS, series_labels(http_route="/healthz"), 1)
    expect_series(expo, REQUESTS, series_labels(http_route="_OTHER"), 1)
    expect_series(expo, REQUESTS, series_labels(http_route="/users/{id}", http_request_method="_OTHER"), 1)
    assert expo.total(REQUESTS) == 10
    assert len(expo.series(REQUESTS)) == 7
    # The raw paths never became label values.
    routes = {s.labels.get("http_route") for s in expo.series(REQUESTS)}
    assert routes == {"/users/{id}", "/users/{id}/orders/open", "/healthz", "_OTHER"}


def test_error_type_reports_5xx_and_proxy_failures(users_sidecar):
    envoy = users_sidecar
    assert envoy.request("GET", "/users/1?status=503")[0] == 503
    assert envoy.request("GET", "/users/1?status=500")[0] == 500
    assert envoy.request("GET", "/dead/1")[0] == 503            # nothing listens: connection failure
    assert envoy.request("GET", "/timeout?delay_ms=1500")[0] == 504  # route timeout 0.2 s
    expo = envoy.scrape()
    expect_series(expo, REQUESTS, series_labels(http_route="/users/{id}", http_response_status_code="503",
                                                error_type="503"), 1)
    expect_series(expo, REQUESTS, series_labels(http_route="/users/{id}", http_response_status_code="500",
                                                error_type="500"), 1)
    expect_series(expo, REQUESTS, series_labels(http_response_status_code="503", error_type="connection_failure"), 1)
    expect_series(expo, REQUESTS, series_labels(http_response_status_code="504", error_type="timeout"), 1)


def test_duration_histogram_places_controlled_delays_in_their_buckets(users_sidecar):
    envoy = users_sidecar
    for delay in (0, 0, 120, 120, 120, 600):
        assert envoy.request("GET", f"/users/1?delay_ms={delay}")[0] == 200
    labels = series_labels(http_route="/users/{id}")
    # Histograms are published on Envoy's stats flush (1 s here).
    expo = wait_until(lambda: (e := envoy.scrape()).value(f"{DURATION}_count", **labels) == 6 and e,
                      what="duration histogram flush")
    buckets = expo.buckets(DURATION, **labels)
    assert list(buckets) == ["5", "10", "25", "50", "75", "100", "250", "500", "750", "1000", "2500", "5000",
                             "7500", "10000", "+Inf"]
    assert buckets["50"] == 2      # the two undelayed requests
    assert buckets["100"] == 2     # nothing between 50 and 100 ms
    assert buckets["250"] == 5     # + the three 120 ms requests
    assert buckets["500"] == 5
    assert buckets["750"] == 6     # + the 600 ms request
    assert buckets["+Inf"] == 6
    total = expo.value(f"{DURATION}_sum", **labels)
    assert 960 <= total <= 1300, total


def test_active_requests_track_in_flight_requests_and_return_to_zero(users_sidecar):
    envoy = users_sidecar
    # The contract lists no active labels: the gauge carries every request-side label.
    active_labels = {"http_request_method": "GET", "http_route": "/users/{id}", "url_scheme": "http",
                     "network_protocol_version": "1.1", **POD}
    threads = [threading.Thread(target=envoy.request, args=("GET", "/users/1?delay_ms=1500")) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: envoy.scrape().value(ACTIVE, **active_labels) == 3, what="3 requests in flight")
    finally:
        for t in threads:
            t.join()
    expo = wait_until(lambda: (e := envoy.scrape()).value(ACTIVE, **active_labels) == 0 and e, what="active back to 0")
    expect_series(expo, ACTIVE, active_labels, 0)
    expect_series(expo, REQUESTS, series_labels(http_route="/users/{id}"), 3)


def test_pod_identity_comes_from_istio_node_metadata(workdir, upstream):
    metadata = {"NAME": "api-5f6d7c8b9-abcde", "NAMESPACE": "payments", "WORKLOAD_NAME": "api",
                "LABELS": {"app.kubernetes.io/name": "payments-api"}}
    with sidecar(workdir, DEFAULT_CONTRACT, upstream.port, node_metadata=metadata) as envoy:
        envoy.request("GET", "/")
        expo = envoy.scrape()
    sample, = expo.series(REQUESTS)
    assert sample.labels["k8s_pod_name"] == "api-5f6d7c8b9-abcde"
    assert sample.labels["k8s_namespace_name"] == "payments"
    assert sample.labels["service_name"] == "payments-api"  # app.kubernetes.io/name before WORKLOAD_NAME


def test_missing_node_metadata_falls_back_to_defaults(workdir, upstream):
    with sidecar(workdir, DEFAULT_CONTRACT, upstream.port, node_metadata={}) as envoy:
        envoy.request("GET", "/")
        sample, = envoy.scrape().series(REQUESTS)
    assert "k8s_pod_name" not in sample.labels  # no NAME, no default: the label is absent
    assert sample.labels["service_name"] == "unknown"


CAPPED_CONTRACT = """
format: metricpact/v1
name: capped
version: 1.0.0
labels:
  - name: http_route
    from: request.route
  - name: tenant
    from: request.header.x-tenant
    max_values: 2
  - name: k8s_pod_name
    from: node.NAME
routes:
  unmatched: raw
  raw_max_length: 24
cardinality:
  max_series: 5
"""


def test_label_values_beyond_their_budget_become_other_and_are_counted(workdir, upstream):
    contract = write_contract(workdir, CAPPED_CONTRACT)
    with sidecar(workdir, contract, upstream.port) as envoy:
        for tenant in ["acme", "globex", "initech", "umbrella", "acme"]:
            envoy.request("GET", "/a", headers={"x-tenant": tenant})
        envoy.request("GET", "/a")  # no header: the label is absent, which costs no budget
        expo = envoy.scrape()
    pod = {"k8s_pod_name": "cart-7d9f8b6c5-x2x8k"}
    expect_series(expo, REQUESTS, {"http_route": "/a", "tenant": "acme", **pod}, 2)
    expect_series(expo, REQUESTS, {"http_route": "/a", "tenant": "globex", **pod}, 1)
    expect_series(expo, REQUESTS, {"http_route": "/a", "tenant": "_OTHER", **pod}, 2)
    expect_series(expo, REQUESTS, {"http_route": "/a", **pod}, 1)
    expect_series(expo, "metricpact_label_overflow_total", {"metricpact_label": "tenant"}, 2)
    expect_series(expo, "metricpact_label_overflow_total", {"metricpact_label": "http_route"}, 0)


def test_series_budget_sends_new_combinations_to_one_overflow_series(workdir, upstream):
    contract = write_contract(workdir, CAPPED_CONTRACT)
    # Two workers, two Wasm VMs: the budget holds for the sidecar as a whole.
    with sidecar(workdir, contract, upstream.port, concurrency=2) as envoy:
        for i in range(9):
            envoy.request("GET", f"/p{i}", headers={"x-tenant": "acme"})
        expo = envoy.scrape()
    pod = {"k8s_pod_name": "cart-7d9f8b6c5-x2x8k"}
    assert len(expo.series(REQUESTS)) == 6
    expect_series(expo, REQUESTS, {"http_route": "_OTHER", "tenant": "_OTHER", **pod}, 4)
    expect_series(expo, "metricpact_series_overflow_total", {"metricpact_metric": REQUESTS}, 4)
    expect_series(expo, "metricpact_series_overflow_total", {"metricpact_metric": ACTIVE}, 4)
    assert expo.total(REQUESTS) == 9


def test_hostile_paths_and_headers_cannot_forge_labels_or_metrics(workdir, upstream):
    contract = write_contract(workdir, CAPPED_CONTRACT)
    forged = 'x;.;k8s_pod_name=.=evil;.;"}\\ 1'
    with sidecar(workdir, contract, upstream.port) as envoy:
        envoy.request("GET", "/ok", headers={"x-tenant": forged})
        # Envoy 1.40 passes a raw path with the separators and a quote, and obs-text (0xff) in a
        # header value, to the filters; a DEL (0x7f) in a header is a codec error (400) that no
        # HTTP filter sees. Each outcome is asserted, so none of the branches can go unchecked.
        raw = raw_request(envoy.port, b'GET /h;.;k8s_pod_name=.=evil;.;"x HTTP/1.1\r\nHost: a\r\nx-tenant: t=.=\xff\r\n\r\n')
        assert raw.startswith(b"HTTP/1.1 200 "), raw
        refused = raw_request(envoy.port, b'GET /d;.;k8s_pod_name=.=evil HTTP/1.1\r\nHost: a\r\nx-tenant: d=.=\x7f\r\n\r\n')
        assert refused.startswith(b"HTTP/1.1 400 Bad Request\r\n"), refused
        envoy.request("GET", "/%0Ainjected%22")
        expo = envoy.scrape()
    pods = {s.labels.get("k8s_pod_name") for s in expo.series(REQUESTS)}
    assert pods == {"cart-7d9f8b6c5-x2x8k"}
    tenants = {s.labels.get("tenant") for s in expo.series(REQUESTS)}
    routes = {s.labels.get("http_route") for s in expo.series(REQUESTS)}
    # The budgets (tenant: 2 values, 5 series) keep the first two tenants; routes are cut at 24
    # bytes; the 0xff reaches the filter as U+FFFD (3 bytes, each replaced by `_`).
    assert tenants == {"x_._k8s_pod_name_._evil_.__}__1", "t_.____", None}, tenants
    assert routes == {"/ok", "/h_._k8s_pod_name_._evil", "/%0Ainjected%22", None}, routes
    # The refused request is counted, with nothing of it but the pod's identity: Envoy hands the
    # filter none of its headers (the codec refused them), so no label could come from them.
    refused_series = [s for s in expo.series(REQUESTS) if "http_route" not in s.labels]
    assert [(s.labels, s.value) for s in refused_series] == [({"k8s_pod_name": "cart-7d9f8b6c5-x2x8k"}, 1)]
    for s in expo.samples:
        for v in s.labels.values():
            assert ";.;" not in v and "=.=" not in v and "\n" not in v and '"' not in v
    assert not [n for n in {s.name for s in expo.samples} if "evil" in n or "injected" in n]


def test_contract_info_names_the_running_contract(workdir, upstream):
    plugin_config, _ = compile_contract(DEFAULT_CONTRACT)
    import json
    expected_hash = json.loads(plugin_config)["contract"]["hash"]
    assert len(expected_hash) == 12
    with sidecar(workdir, DEFAULT_CONTRACT, upstream.port) as envoy:
        expo = envoy.scrape()
    # The contract, and the pod's identity (every label fixed per sidecar), from the filter's start.
    expect_series(expo, "metricpact_contract_info", {"metricpact_contract_name": "http-server",
                                                     "metricpact_contract_version": "1.0.0",
                                                     "metricpact_contract_hash": expected_hash, **POD}, 1)


def refused_start(workdir, upstream, plugin_config):
    """Starts an Envoy whose metricpact filter gets `plugin_config`; it must exit. Returns its log
    and the filter's refusal lines."""
    config = bootstrap(listener_port=free_port(), admin_port=free_port(), upstream_port=upstream.port,
                       http_filters=[wasm_http_filter(plugin_config)], stats_config={},
                       node_metadata=ISTIO_NODE_METADATA)
    envoy = Envoy(config, workdir, concurrency=1, expect_start=False)
    with envoy:
        envoy.proc.wait(timeout=30)
    assert envoy.proc.returncode != 0
    log = envoy.log_text()
    return log, [line for line in log.splitlines() if "metricpact: refusing to start" in line]


@pytest.mark.parametrize("configuration, reason", [
    ("{not json", "invalid plugin configuration"),
    ('{"format": 1}', "invalid plugin configuration"),
    ("", "no plugin configuration"),
])
def test_invalid_plugin_configuration_refuses_to_start_with_one_clear_line(workdir, upstream, configuration, reason):
    log, lines = refused_start(workdir, upstream, configuration)
    assert len(lines) == 1, log[-2000:]
    assert reason in lines[0]
    assert "panic" not in log.lower()


def test_invalid_semantics_are_refused_too(workdir, upstream):
    plugin_config, _ = compile_contract(DEFAULT_CONTRACT)
    broken = plugin_config.replace('"name":"k8s_pod_name"', '"name":"pod"')
    assert broken != plugin_config
    log, _ = refused_start(workdir, upstream, broken)
    # The validator's field and rule (the module carries no messages: `check` explains them).
    # Every broken rule in one line: the renamed label is also gone from the in-flight gauge's labels.
    assert ("metricpact: refusing to start: invalid plugin configuration: labels[6].name: label-conflict; "
            "active_requests.labels[2]: active-label-unknown (`metricpact check CONTRACT` explains each at its line)"
            ) in log


def _mutated(plugin_config, change):
    config = json.loads(plugin_config)
    change(config)
    return json.dumps(config)


@pytest.mark.parametrize("change, refusal", [
    # Rules the filter did not apply before it shared `check`'s validator (each was accepted).
    (lambda c: c.update(max_value_length=2000), "max_value_length: range"),
    (lambda c: c["routes"].update(raw_max_length=0), "routes.raw_max_length: range"),
    (lambda c: c["routes"]["rules"].append({"match": {"kind": "regex", "value": "(?x)/a #"}, "template": "/a"}),
     "routes.rules[7].match: route-regex"),
    (lambda c: c["exposition"]["rename_metrics"].append(
        {"match": {"kind": "regex", "value": "orders_(.*)"}, "to": "app-$1"}),
     "exposition.rename_metrics[3].to: rename-template-name"),
    (lambda c: c["exposition"].setdefault("migrations", []).extend([
        {"kind": "metric", "old": "a_total", "new": "b_total", "sunset": "2099-01-01", "sunset_unix": 4070908800},
        {"kind": "metric", "old": "a_total", "new": "c_total", "sunset": "2099-01-01", "sunset_unix": 4070908800}]),
     "exposition.migrations[1].old: migration-twice"),
])
def test_the_filter_refuses_what_check_refuses(workdir, upstream, change, refusal):
    plugin_config, _ = compile_contract(ROOT / "contracts/rest-api.yaml")
    log, lines = refused_start(workdir, upstream, _mutated(plugin_config, change))
    assert len(lines) == 1, log[-2000:]
    assert f"invalid plugin configuration: {refusal} (`metricpact check CONTRACT` explains each at its line)" in lines[0]


def test_every_shipped_contract_runs_in_envoy(workdir, upstream):
    for contract in sorted((ROOT / "contracts").glob("*.yaml")):
        with sidecar(workdir, contract, upstream.port, concurrency=1) as envoy:
            assert envoy.request("POST", "/")[0] == 200
            expo = envoy.scrape()
        info, = expo.series("metricpact_contract_info")
        assert info.value == 1
        assert expo.total(json_name(contract)) == 1, contract


def json_name(contract: Path) -> str:
    import json
    plugin_config, _ = compile_contract(contract)
    return json.loads(plugin_config)["requests"]["name"]


def test_requests_denied_by_an_earlier_filter_are_still_counted(workdir, upstream):
    """An RBAC filter before metricpact answers 403 itself: the response never passes our filter,
    so status and duration come from Envoy's stream info at log time."""
    rbac = {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "DENY", "policies": {"forbidden": {
                "permissions": [{"url_path": {"path": {"prefix": "/admin"}}}],
                "principals": [{"any": True}]}}},
        },
    }
    plugin_config, stats = compile_contract(DEFAULT_CONTRACT)
    config = bootstrap(listener_port=free_port(), admin_port=free_port(), upstream_port=upstream.port,
                       http_filters=[rbac, wasm_http_filter(plugin_config)], stats_config=stats,
                       node_metadata=ISTIO_NODE_METADATA)
    with Envoy(config, workdir) as envoy:
        assert envoy.request("GET", "/admin/users")[0] == 403
        assert envoy.request("GET", "/ok")[0] == 200
        labels = {**series_labels(http_response_status_code="403"), "http_route": "_OTHER"}
        expo = wait_until(lambda: (e := envoy.scrape()).value(f"{DURATION}_count", **labels) == 1 and e,
                          what="histogram flush")
    expect_series(expo, REQUESTS, labels, 1)
    expect_series(expo, REQUESTS, series_labels(), 1)
