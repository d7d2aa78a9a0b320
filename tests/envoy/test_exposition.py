"""The app's own /metrics, rewritten by the real metricpact.wasm in a real Envoy sidecar.

Real client-library apps (tests/apps: prometheus_client, prom-client, the OpenTelemetry Prometheus
exporter) run behind their own sidecar, each with an example contract from tests/data/contracts/
whose node metadata gives the pod's name and namespace. Scrapes go through the Envoy listener with
the Accept header real scrapers send; the sidecar always asks the app for text 0.0.4, uncompressed
(the response's Content-Type must be decided before the body is seen), so only an app that sends
OpenMetrics regardless (prom-client --openmetrics) answers OpenMetrics through it; the recorded
OpenMetrics expositions of the other libraries are served by a scripted upstream instead. The
output format is the one the app's Content-Type announces; an OpenMetrics body announced as text
(bare text/plain, no Content-Type) is converted to text. The rewritten series and values are
asserted exactly (the apps record fixed observations at startup: tests/data/expositions/README.md),
the output is validated (promtool for the text format; prometheus_client's strict OpenMetrics
parser for OpenMetrics, which promtool 2.42 cannot parse), and a real Prometheus scrapes the apps
through the sidecars. A scripted upstream serves what no well-behaved app does -- malformed, truncated,
oversized, non-UTF-8, compressed and protobuf bodies, error statuses -- which must pass through
byte-identical while metricpact counts why in metricpact_exposition_scrapes_total."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

import harness
from exposition_support import (APPS, CONTRACTS, OPENMETRICS_ACCEPT, OPENMETRICS_CT, PROMETHEUS2_ACCEPT, PROMTOOL,
                                PROTOBUF_ACCEPT, PROTOBUF_THEN_TEXT_ACCEPT, SAMPLES, SCRAPE_ACCEPT, TEXT_ACCEPT, TEXT_CT,
                                Scripted, ScriptedUpstream, ScrapingPrometheus, Target, delta, scrape, self_metrics,
                                start_app)

NAMESPACE = "shop"
TRICKY = 'upstream "inventory" said: C:\\queue\\full\nretry in 5s — café'
TRACE_A = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_B = "0af7651916cd43dd8448eb211c80319c"

ITEMS = CONTRACTS / "items-prometheus-client.yaml"
ORDERS = CONTRACTS / "orders-prom-client.yaml"
CHECKOUT = CONTRACTS / "checkout-otel.yaml"

# pod key -> (app, app args, contract, pod name)
PODS = {
    "python": ("python", [], ITEMS, "items-6c8d7f9b5-m2p4r"),
    "python_bare_text_plain": ("python", ["--content-type", "text/plain"], ITEMS, "items-6c8d7f9b5-b4r3t"),
    "python_no_content_type": ("python", ["--content-type", "none"], ITEMS, "items-6c8d7f9b5-n0c7t"),
    "node": ("node", [], ORDERS, "orders-5b7c9d8f6-q4z7x"),
    "node_om": ("node", ["--openmetrics"], ORDERS, "orders-5b7c9d8f6-0m3tr"),
    # prom-client ignores Accept: OpenMetrics bodies whatever the sidecar asks, with a wrong Content-Type.
    "node_om_bare_text_plain": ("node", ["--openmetrics", "--content-type", "text/plain"], ORDERS,
                                "orders-5b7c9d8f6-b4r3t"),
    "node_om_no_content_type": ("node", ["--openmetrics", "--content-type", "none"], ORDERS, "orders-5b7c9d8f6-n0c7t"),
    "otel": ("otel", [], CHECKOUT, "checkout-7f6d5c4b3-h8j9k"),
}


def pod_labels(pod: str) -> dict:
    return {"k8s_pod_name": PODS[pod][3], "k8s_namespace_name": NAMESPACE}


class Pod:
    """A running app and its sidecar."""

    def __init__(self, key, app_port, envoy):
        self.key, self.app_port, self.envoy = key, app_port, envoy
        self.name = PODS[key][3]


class Pods:
    """Starts each app and its sidecar the first time a test needs it; stops all at the end."""

    def __init__(self, stack: contextlib.ExitStack, workdir: Path):
        self.stack, self.workdir, self.pods = stack, workdir, {}

    def __getitem__(self, key) -> Pod:
        if key not in self.pods:
            app, args, contract, name = PODS[key]
            port = start_app(self.stack, [*APPS[app], *args], self.workdir, key)
            envoy = self.stack.enter_context(harness.sidecar(
                self.workdir, contract, port, node_metadata={"NAME": name, "NAMESPACE": NAMESPACE}, concurrency=1))
            self.pods[key] = Pod(key, port, envoy)
        return self.pods[key]


@pytest.fixture(scope="module")
def pods(tmp_path_factory):
    with contextlib.ExitStack() as stack:
        yield Pods(stack, tmp_path_factory.mktemp("pods"))


# ---------------------------------------------------------------- parsing helpers

def parse_openmetrics(text: str):
    """(families, samples) from prometheus_client's strict OpenMetrics parser; raises if invalid."""
    families = list(text_string_to_metric_families(text))
    samples = [s for f in families for s in f.samples]
    return families, samples


def om_as_text(body: bytes) -> bytes:
    """An OpenMetrics body, parsed strictly (raises if invalid), re-encoded as text 0.0.4 by
    prometheus_client, so promtool can lint what it holds."""
    families, _ = parse_openmetrics(body.decode())
    assert families

    class Replay:
        def collect(self):
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Replay())
    return generate_latest(registry)


def series_of(body: str, fmt: str) -> list:
    """[(name, labels, value, exemplar)] of a text or OpenMetrics body."""
    if fmt == "om":
        return [(s.name, dict(s.labels), s.value, s.exemplar) for s in parse_openmetrics(body)[1]]
    return [(s.name, s.labels, s.value, None) for s in harness.Exposition.parse(body).samples]


def expect_exact(series, name, expected):
    """The series of `name` are exactly `expected`: [(labels, value)] (order-insensitive)."""
    have = sorted(((sorted(labels.items()), value) for n, labels, value, _ in series if n == name), key=repr)
    want = sorted(((sorted(labels.items()), value) for labels, value in expected), key=repr)
    assert have == want, f"{name}:\n have {have}\n want {want}"


def buckets(bounds, counts, **labels):
    return [({**labels, "le": le}, float(c)) for le, c in zip(bounds, counts)]


def promtool(body: bytes) -> tuple[int, list]:
    """`promtool check metrics` exit code and findings (0 ok, 3 lint findings, 1 parse error)."""
    res = subprocess.run([str(PROMTOOL), "check", "metrics"], input=body, capture_output=True, timeout=30)
    return res.returncode, sorted(l for l in (res.stdout + res.stderr).decode().splitlines() if l.strip())


# ---------------------------------------------------------------- expected rewrites per app

PY_BOUNDS = ["0.005", "0.01", "0.05", "0.1", "0.5", "1.0", "+Inf"]
NODE_BOUNDS = ["5", "10", "25", "50", "100", "250", "500", "1000", "+Inf"]
OTEL_BOUNDS = ["0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1", "2.5", "5", "7.5", "10",
               "+Inf"]


def check_items(series, p, fmt):
    """prometheus_client -> items contract: labels renamed to OTel names, the histogram renamed and
    summed over routes, the summary renamed, runtime families dropped. `p`: the injected identity."""
    req = lambda code, route, method: {"http_response_status_code": code, "http_route": route,  # noqa: E731
                                       "http_request_method": method, **p}
    requests = [(req("200", "/api/items", "GET"), 3.0), (req("201", "/api/items", "POST"), 1.0),
                (req("500", "/api/items", "GET"), 2.0), (req("404", "/api/items/{id}", "GET"), 1.0)]
    expect_exact(series, "http_requests_total", requests)
    expect_exact(series, "http_requests_created", [(labels, _created(series, "http_requests_created", labels))
                                                   for labels, _ in requests])
    hist = "http_server_request_duration_seconds"
    expect_exact(series, f"{hist}_bucket", buckets(PY_BOUNDS, [1, 1, 2, 3, 4, 4, 4], **p))
    expect_exact(series, f"{hist}_count", [(p, 4.0)])
    expect_exact(series, f"{hist}_sum", [(p, 0.399)])   # 0.324 + 0.075
    expect_exact(series, "payment_duration_seconds_count", [(p, 2.0)])
    expect_exact(series, "payment_duration_seconds_sum", [(p, 1.75)])
    expect_exact(series, "inflight_jobs", [({"queue": "emails", **p}, 3.0), ({"queue": "reports", **p}, 1.0)])
    expect_exact(series, "app_build_info", [({"branch": "main", "commit": "3f9c2ab", "version": "1.4.2", **p}, 1.0)])
    expect_exact(series, "app_errors_total", [({"reason": TRICKY, **p}, 1.0)])
    expected = {"http_requests_total", "http_requests_created", f"{hist}_bucket", f"{hist}_count", f"{hist}_sum",
                "payment_duration_seconds_count", "payment_duration_seconds_sum", "inflight_jobs",
                "app_build_info", "app_errors_total", "app_errors_created"}
    names = {s[0] for s in series}
    assert expected <= names, expected - names
    # Histogram and summary `_created` series: see test_text_created_series_follow_their_renamed_family.
    created = {"http_request_duration_seconds_created", "payment_processing_seconds_created",
               f"{hist}_created", "payment_duration_seconds_created"}
    assert names - expected <= created, f"unexpected families: {names - expected - created}"
    if fmt == "om":
        # OpenMetrics keeps `_created` inside its family: summed series keep the earliest.
        assert {f"{hist}_created", "payment_duration_seconds_created"} <= names
        expect_exact(series, f"{hist}_created", [(p, _created(series, f"{hist}_created", p))])


def _created(series, name, labels):
    """The value of a `_created` series (a start timestamp: varies per run, must be plausible)."""
    found = [v for n, l, v, _ in series if n == name and l == labels]
    assert len(found) == 1, f"{name}{labels}: {len(found)} series"
    assert 1.7e9 < found[0] < 2.1e9, found[0]
    return found[0]


def check_orders(series, p, fmt):
    """prom-client -> orders contract: the counter renamed to http_requests_total in both formats,
    the ms histogram renamed with its labels, summed over method and status, Express route
    parameters mapped to {id}, runtime families dropped. (Exemplars: test_openmetrics_exemplars_survive.)"""
    expect_exact(series, "http_requests_total", [({"http_response_status_code": "200", **p}, 5.0),
                                                 ({"http_response_status_code": "404", **p}, 1.0),
                                                 ({"http_response_status_code": "500", **p}, 2.0)])
    hist = "http_request_duration_milliseconds"
    orders, order = {"http_route": "/api/orders", **p}, {"http_route": "/api/orders/{id}", **p}
    expect_exact(series, f"{hist}_bucket", buckets(NODE_BOUNDS, [1, 1, 2, 2, 2, 2, 3, 3, 4], **orders)
                 + buckets(NODE_BOUNDS, [0, 0, 1, 1, 1, 1, 1, 1, 1], **order))
    expect_exact(series, f"{hist}_sum", [(orders, 1824.0), (order, 12.0)])   # 324 + 1500
    expect_exact(series, f"{hist}_count", [(orders, 4.0), (order, 1.0)])
    expect_exact(series, "checkout_duration_seconds", [({"quantile": "0.5", **p}, 0.25),
                                                       ({"quantile": "0.9", **p}, 0.4),
                                                       ({"quantile": "0.99", **p}, 0.4)])
    expect_exact(series, "checkout_duration_seconds_sum", [(p, 1.0)])
    expect_exact(series, "checkout_duration_seconds_count", [(p, 4.0)])
    expect_exact(series, "queue_depth", [({"queue": "orders", **p}, 7.0), ({"queue": "emails", **p}, 0.0)])
    expect_exact(series, "app_errors_total", [({"reason": TRICKY, **p}, 1.0)])
    assert {s[0] for s in series} == {
        "http_requests_total", f"{hist}_bucket", f"{hist}_sum", f"{hist}_count", "checkout_duration_seconds",
        "checkout_duration_seconds_sum", "checkout_duration_seconds_count", "queue_depth", "app_errors_total"}


def check_orders_exemplars(series):
    """The counter's exemplars (OpenMetrics) survive the rename and the label rename."""
    exemplars = {s[1]["http_response_status_code"]: s[3] for s in series if s[0] == "http_requests_total"}
    assert {code: e and (e.labels, e.value) for code, e in exemplars.items()} == {
        "200": ({"trace_id": TRACE_A}, 2.0), "404": ({"trace_id": TRACE_B}, 1.0), "500": ({"trace_id": TRACE_B}, 2.0)}


def check_checkout(series, p, fmt):
    """OTel exporter -> checkout contract: otel_scope_* dropped everywhere, orders renamed and
    summed over coupons, runtime families and target_info dropped (in OpenMetrics too, where the
    family is `# TYPE target info`)."""
    hist = "http_server_request_duration_seconds"
    get200 = {"http_request_method": "GET", "http_response_status_code": "200", "http_route": "/api/items",
              "url_scheme": "http", **p}
    post201 = {**get200, "http_request_method": "POST", "http_response_status_code": "201"}
    get404 = {**get200, "http_response_status_code": "404", "http_route": "/api/items/{id}"}
    expect_exact(series, f"{hist}_bucket",
                 buckets(OTEL_BOUNDS, [1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3], **get200)
                 + buckets(OTEL_BOUNDS, [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], **post201)
                 + buckets(OTEL_BOUNDS, [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], **get404))
    expect_exact(series, f"{hist}_count", [(get200, 3.0), (post201, 1.0), (get404, 1.0)])
    expect_exact(series, f"{hist}_sum", [(get200, 0.324), (post201, 0.05), (get404, 0.012)])
    expect_exact(series, "http_server_active_requests", [({"http_request_method": "GET", "url_scheme": "http", **p},
                                                          2.0)])
    expect_exact(series, "orders_placed_total", [({"payment_method": "card", **p}, 3.0),
                                                 ({"payment_method": "voucher", **p}, 3.0)])   # 2 + 1 (coupon)
    expected = {f"{hist}_bucket", f"{hist}_count", f"{hist}_sum", "http_server_active_requests",
                "orders_placed_total"}
    assert {s[0] for s in series} == expected


# variant -> (pod, the scraper's Accept, the format the scraper gets, check). The sidecar asks every app
# for text (SCRAPE_ACCEPT): prometheus_client and the OTel exporter negotiate, so they answer text even
# when the scraper asks for OpenMetrics first (Prometheus 2.42) or protobuf first (Prometheus 3 with
# native histograms); prom-client ignores Accept, so its OpenMetrics registry (node_om) still answers
# OpenMetrics, with the OpenMetrics Content-Type, and gets OpenMetrics back.
VARIANTS = {
    "prometheus_client-protobuf-then-text-scraper": ("python", PROTOBUF_THEN_TEXT_ACCEPT, "text", check_items),
    "prometheus_client-openmetrics-scraper": ("python", PROMETHEUS2_ACCEPT, "text", check_items),
    "prom-client-text": ("node", PROMETHEUS2_ACCEPT, "text", check_orders),
    "prom-client-openmetrics": ("node_om", PROMETHEUS2_ACCEPT, "om", check_orders),
    "otel-text-scraper": ("otel", TEXT_ACCEPT, "text", check_checkout),
    "otel-openmetrics-scraper": ("otel", PROMETHEUS2_ACCEPT, "text", check_checkout),
}
RUNTIME_NOISE = ("process_", "python_gc_", "python_info", "nodejs_", "otel_scope_")


def test_example_contracts_pass_check():
    res = harness.run_cli("check", str(ITEMS), str(ORDERS), str(CHECKOUT), check=False)
    assert res.returncode == 0, res.stderr
    assert "3 contract(s) OK" in res.stderr, res.stderr


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rewrites_real_app_exposition_exactly(pods, variant):
    key, accept, fmt, check = VARIANTS[variant]
    pod = pods[key]
    resp = scrape(pod.envoy.port, accept=accept)
    assert resp.status == 200, resp.body[:300]
    assert resp.header("content-type") == (OPENMETRICS_CT if fmt == "om" else TEXT_CT)
    # The length changed, so Envoy re-frames the body; never a stale Content-Length.
    assert resp.header("content-length") is None and resp.header("transfer-encoding") == "chunked"
    assert resp.header("content-encoding") is None
    body = resp.text()
    assert body.endswith("# EOF\n") == (fmt == "om")
    series = series_of(body, fmt)
    check(series, pod_labels(key), fmt)
    # Every series carries the pod's identity from node metadata; the noise is gone.
    assert all({k: s[1].get(k) for k in ("k8s_pod_name", "k8s_namespace_name")} == pod_labels(key) for s in series)
    assert not [s[0] for s in series if s[0].startswith(RUNTIME_NOISE)]
    assert not [label for s in series for label in s[1] if label.startswith("otel_scope_")]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rewritten_output_validates_wherever_the_apps_did(pods, variant):
    """promtool (text) / the strict OpenMetrics parser (OpenMetrics: promtool 2.42 cannot parse it)
    accept every rewrite whose input they accepted; lint findings only shrink (prom-client's are
    fixed by the contract, except the unit it keeps in the name)."""
    key, accept, fmt, _ = VARIANTS[variant]
    pod = pods[key]
    rewritten = scrape(pod.envoy.port, accept=accept).body
    # What the app itself answers to the request the sidecar makes.
    raw = scrape(pod.app_port, accept=SCRAPE_ACCEPT, accept_encoding="identity").body
    assert raw.endswith(b"# EOF\n") == (fmt == "om")
    if fmt == "om":
        # promtool 2.42 cannot read OpenMetrics: the strict parser must accept both, and both
        # are linted as the text prometheus_client writes for the families it parsed.
        raw, rewritten = om_as_text(raw), om_as_text(rewritten)
    raw_rc, raw_findings = promtool(raw)
    rc, findings = promtool(rewritten)
    assert raw_rc in (0, 3), raw_findings             # every app's text output parses
    assert rc in (0, 3), findings                     # so must the rewrite
    if raw_rc == 0:
        assert (rc, findings) == (0, []), findings
    if key == "node_om":
        # prom-client's OpenMetrics counter is typed right (`request_count` with `_total` samples),
        # so only the unit and the gauges' `_total` remain; the rewrite keeps the unit in the name.
        assert raw_findings == sorted([
            'http_request_duration_ms metric names should not contain abbreviated units',
            'nodejs_active_handles_total non-counter metrics should not have "_total" suffix',
            'nodejs_active_requests_total non-counter metrics should not have "_total" suffix',
            'nodejs_active_resources_total non-counter metrics should not have "_total" suffix'])
        assert findings == ['http_request_duration_milliseconds use base unit "seconds" instead of "milliseconds"']
    if key == "node":
        assert raw_findings == sorted([
            'http_request_duration_ms metric names should not contain abbreviated units',
            'nodejs_active_handles_total non-counter metrics should not have "_total" suffix',
            'nodejs_active_requests_total non-counter metrics should not have "_total" suffix',
            'nodejs_active_resources_total non-counter metrics should not have "_total" suffix',
            'request_count counter metrics should have "_total" suffix',
            'request_count non-histogram and non-summary metrics should not have "_count" suffix'])
        assert findings == ['http_request_duration_milliseconds use base unit "seconds" instead of "milliseconds"']


def test_openmetrics_exemplars_survive_the_rewrite(pods):
    resp = scrape(pods["node_om"].envoy.port, accept=PROMETHEUS2_ACCEPT)
    assert resp.header("content-type") == OPENMETRICS_CT
    check_orders_exemplars(series_of(resp.text(), "om"))


def test_text_created_series_follow_their_renamed_family(pods):
    resp = scrape(pods["python"].envoy.port, accept=PROMETHEUS2_ACCEPT)
    assert resp.header("content-type") == TEXT_CT
    series = series_of(resp.text(), "text")
    names = {s[0] for s in series}
    p = pod_labels("python")
    assert "http_request_duration_seconds_created" not in names
    assert "payment_processing_seconds_created" not in names
    body = resp.text()
    # The `_created` gauge families keep their HELP and TYPE lines under the new names.
    assert ("# HELP http_server_request_duration_seconds_created HTTP request latency in seconds.\n"
            "# TYPE http_server_request_duration_seconds_created gauge\n") in body
    assert "# TYPE payment_duration_seconds_created gauge\n" in body
    # One histogram series after summing over http_route: one `_created` (the earliest), like OpenMetrics.
    expect_exact(series, "http_server_request_duration_seconds_created",
                 [(p, _created(series, "http_server_request_duration_seconds_created", p))])
    expect_exact(series, "payment_duration_seconds_created",
                 [(p, _created(series, "payment_duration_seconds_created", p))])


def test_info_metric_rules_apply_in_openmetrics_too(sample_sidecars):
    """`drop_metrics: [target_info]` drops the OTel exporter's OpenMetrics `# TYPE target info` family
    (HELP and TYPE lines included), as it drops the text format's `target_info` gauge. The exporter
    answers the sidecar in text, so its recorded OpenMetrics answer is served as it sent it."""
    up, envoys = sample_sidecars
    body = (SAMPLES / "python_otel.om.txt").read_bytes()
    assert b"# TYPE target info\ntarget_info{" in body
    up.answers["/metrics?case=info"] = Scripted(body, headers=[("Content-Type", CLI_SAMPLES["python_otel.om.txt"][1])])
    resp = scrape(envoys[CHECKOUT].port, "/metrics?case=info")
    assert resp.status == 200 and resp.header("content-type") == OPENMETRICS_CT
    names = {s[0] for s in series_of(resp.text(), "om")}
    assert "target_info" not in names and "http_server_request_duration_seconds_bucket" in names
    assert b"target" not in resp.body                    # no HELP/TYPE line left behind either


# ---------------------------------------------------------------- broken apps

@pytest.mark.parametrize("accept", [TEXT_ACCEPT, PROMETHEUS2_ACCEPT], ids=["text-scraper", "prometheus2"])
@pytest.mark.parametrize("key", ["python_bare_text_plain", "python_no_content_type"])
def test_bare_or_missing_content_type_becomes_canonical_text(pods, key, accept):
    """A text body with a bare or missing Content-Type gets the canonical one and is rewritten,
    whatever the scraper asked for (the sidecar asks the app for text either way)."""
    pod = pods[key]
    raw = scrape(pod.app_port, accept=SCRAPE_ACCEPT, accept_encoding="identity")
    assert raw.header("content-type") == ("text/plain" if key == "python_bare_text_plain" else None)
    assert not raw.body.endswith(b"# EOF\n")
    resp = scrape(pod.envoy.port, accept=accept)
    assert resp.status == 200
    assert resp.header("content-type") == TEXT_CT
    check_items(series_of(resp.text(), "text"), pod_labels(key), "text")
    assert promtool(resp.body) == (0, [])


@pytest.mark.parametrize("key", ["node_om_bare_text_plain", "node_om_no_content_type"])
def test_openmetrics_body_announced_as_text_is_converted_to_text(pods, key):
    """prom-client --openmetrics answers OpenMetrics whatever it is asked; with a bare text/plain or no
    Content-Type the sidecar has already announced text 0.0.4 when the body arrives, so it converts:
    no `# EOF`, counters typed by their `_total` name, no exemplars; the result is text promtool
    parses with the same single finding as prom-client's own text output (test_rewritten_output_...)."""
    pod = pods[key]
    raw = scrape(pod.app_port, accept=SCRAPE_ACCEPT, accept_encoding="identity")
    assert raw.header("content-type") == ("text/plain" if key == "node_om_bare_text_plain" else None)
    assert raw.body.endswith(b"# EOF\n") and b' # {trace_id="' in raw.body     # OpenMetrics, with exemplars
    before = self_metrics(pod.envoy)
    resp = scrape(pod.envoy.port, accept=PROMETHEUS2_ACCEPT)
    assert resp.status == 200
    assert resp.header("content-type") == TEXT_CT
    assert delta(before, self_metrics(pod.envoy)) == {"rewritten": 1}
    body = resp.text()
    assert "# EOF" not in body and " # {" not in body
    assert "# TYPE http_requests_total counter\n" in body and "# TYPE app_errors_total counter\n" in body
    series = series_of(body, "text")
    check_orders(series, pod_labels(key), "text")
    assert all({k: s[1].get(k) for k in ("k8s_pod_name", "k8s_namespace_name")} == pod_labels(key) for s in series)
    assert promtool(resp.body) == (3, ['http_request_duration_milliseconds use base unit "seconds" instead of '
                                       '"milliseconds"'])


# ---------------------------------------------------------------- a real Prometheus

@pytest.fixture(scope="class")
def prometheus(pods, tmp_path_factory):
    """A real Prometheus 2.42 scraping every pod through its sidecar on the app's own path, with
    native histograms enabled so that it asks for protobuf first; plus a probe that records what
    Prometheus sends (directly) and what the app behind a sidecar receives."""
    workdir = tmp_path_factory.mktemp("prometheus")
    with contextlib.ExitStack() as stack:
        probe = stack.enter_context(ScriptedUpstream())
        body = b"# TYPE probe_total counter\nprobe_total 1\n"
        probe.answers["/metrics"] = probe.answers["/direct"] = Scripted(body, headers=[("Content-Type", TEXT_CT)])
        probe_sidecar = stack.enter_context(harness.sidecar(workdir, _write_scripted_contract(workdir), probe.port,
                                                            node_metadata={"NAME": "probe-1", "NAMESPACE": "ns"},
                                                            concurrency=1))
        targets = [Target(key, f"127.0.0.1:{pods[key].envoy.port}", "/metrics",
                          {"namespace": NAMESPACE, "pod": PODS[key][3]}) for key in PODS]
        targets += [Target("probe-direct", f"127.0.0.1:{probe.port}", "/direct"),
                    Target("probe-sidecar", f"127.0.0.1:{probe_sidecar.port}", "/metrics")]
        prom = stack.enter_context(ScrapingPrometheus(workdir, targets, ["--enable-feature=native-histograms"]))
        health = prom.wait_scraped()
        yield prom, health, probe


def _value(prom, query):
    result = prom.query(query)
    assert len(result) == 1, f"{query}: {result}"
    return float(result[0]["value"][1])


class TestPrometheusScrapesThroughSidecars:
    GOOD = ["python", "node", "node_om", "otel"]

    def test_up_and_rewritten_series_queryable(self, prometheus):
        prom, health, _ = prometheus
        for key in self.GOOD:
            assert health[key] == ("up", ""), (key, health[key])
            assert _value(prom, f'up{{job="{key}"}}') == 1
        pod = {k: PODS[k][3] for k in PODS}
        # The same query now works for the Python and the Node apps.
        assert _value(prom, f'sum(http_requests_total{{k8s_pod_name="{pod["python"]}"}})') == 7
        assert _value(prom, f'http_requests_total{{k8s_pod_name="{pod["python"]}",k8s_namespace_name="shop",'
                            f'http_route="/api/items",http_response_status_code="200"}}') == 3
        for key in ("node", "node_om"):
            assert _value(prom, f'http_requests_total{{k8s_pod_name="{pod[key]}",http_response_status_code="200"}}') == 5
            assert _value(prom, f'http_request_duration_milliseconds_count{{k8s_pod_name="{pod[key]}",'
                                f'http_route="/api/orders"}}') == 4
        by_pod = {r["metric"]["k8s_pod_name"]: float(r["value"][1])
                  for r in prom.query('sum by (k8s_pod_name) '
                                     '(http_requests_total{k8s_namespace_name="shop",job=~"python|node|node_om"})')}
        assert by_pod == {pod["python"]: 7, pod["node"]: 8, pod["node_om"]: 8}
        assert _value(prom, f'orders_placed_total{{k8s_pod_name="{pod["otel"]}",payment_method="voucher"}}') == 3
        assert _value(prom, f'sum(http_server_request_duration_seconds_count{{k8s_pod_name="{pod["otel"]}"}})') == 5
        assert _value(prom, f'http_server_request_duration_seconds_bucket{{k8s_pod_name="{pod["python"]}",le="0.1"}}') == 3
        # Label values that need escaping arrive intact.
        reasons = prom.query(f'app_errors_total{{k8s_pod_name=~"{pod["python"]}|{pod["node"]}"}}')
        assert sorted(r["metric"]["reason"] for r in reasons) == [TRICKY, TRICKY]
        # No runtime noise from any pod.
        jobs = "|".join(self.GOOD)
        assert prom.query(f'{{__name__=~"process_.*|nodejs_.*|python_gc_.*|python_info",job=~"{jobs}"}}') == []

    def test_prometheus_asked_for_protobuf_first_and_the_app_got_text_uncompressed(self, prometheus):
        _, health, probe = prometheus
        assert health["probe-sidecar"] == ("up", "")
        sent = probe.last("/direct").headers
        assert sent["accept"].startswith(PROTOBUF_ACCEPT + ","), sent["accept"]
        assert "gzip" in sent["accept-encoding"]
        received = probe.last("/metrics").headers
        assert received["accept"] == SCRAPE_ACCEPT
        assert "protobuf" not in received["accept"]
        assert received["accept-encoding"] == "identity"

    def test_broken_content_type_apps_are_up(self, prometheus):
        """Apps with a bare or missing Content-Type: text bodies (prometheus_client) and OpenMetrics
        bodies converted to text (prom-client --openmetrics) are scraped and ingested."""
        prom, health, _ = prometheus
        for key in ("python_bare_text_plain", "python_no_content_type", "node_om_bare_text_plain",
                    "node_om_no_content_type"):
            assert health[key] == ("up", ""), (key, health[key])
            assert _value(prom, f'up{{job="{key}"}}') == 1
            pod = PODS[key][3]
            total = 7 if key.startswith("python") else 8
            assert _value(prom, f'sum(http_requests_total{{k8s_pod_name="{pod}",k8s_namespace_name="shop"}})') == total
        for key in ("node_om_bare_text_plain", "node_om_no_content_type"):
            pod = PODS[key][3]
            assert _value(prom, f'http_request_duration_milliseconds_count{{k8s_pod_name="{pod}",'
                                f'http_route="/api/orders/{{id}}"}}') == 1
            assert _value(prom, f'app_errors_total{{k8s_pod_name="{pod}"}}') == 1


# ---------------------------------------------------------------- a scripted upstream: safety

SCRIPTED_CONTRACT = """
format: metricpact/v1
name: scripted
version: 1.0.0
exposition:
  paths: [/metrics, /actuator/prometheus]
  max_body_bytes: 65536
  drop_metrics: ['go_.*']
  rename_metrics:
    - {from: request_count, to: http_requests_total}         # text
    - {from: request_count_total, to: http_requests_total}   # OpenMetrics
  rename_labels:
    - {from: status_code, to: http_response_status_code}
  inject_labels:
    - {name: k8s_pod_name, from: node.NAME}
    - {name: k8s_namespace_name, from: node.NAMESPACE}
  require:
    - {name: http_requests_total, type: counter}
    - {name: queue_depth, type: gauge}
"""
SCRIPTED_POD = {"NAME": "scripted-6d5c4b3a2-x1y2z", "NAMESPACE": "lab"}
MAX_BODY = 65536

VALID = (b"# HELP request_count Requests.\n# TYPE request_count counter\n"
         b'request_count{status_code="200"} 5\nrequest_count{status_code="500"} 1\n'
         b"# HELP queue_depth Depth.\n# TYPE queue_depth gauge\nqueue_depth 3\n# TYPE go_goroutines gauge\ngo_goroutines 12\n")
VALID_REWRITTEN = (b"# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n"
                   b'http_requests_total{http_response_status_code="200",k8s_pod_name="scripted-6d5c4b3a2-x1y2z",'
                   b'k8s_namespace_name="lab"} 5\n'
                   b'http_requests_total{http_response_status_code="500",k8s_pod_name="scripted-6d5c4b3a2-x1y2z",'
                   b'k8s_namespace_name="lab"} 1\n'
                   b"# HELP queue_depth Depth.\n# TYPE queue_depth gauge\n"
                   b'queue_depth{k8s_pod_name="scripted-6d5c4b3a2-x1y2z",k8s_namespace_name="lab"} 3\n')
OM_VALID = (b"# TYPE request_count counter\n"
            b'request_count_total{status_code="200"} 5 # {trace_id="abc"} 1 1700000000.000\n'
            b"# TYPE queue_depth gauge\nqueue_depth 3\n# EOF\n")


def big_exposition(size: int) -> bytes:
    """A valid text exposition of at least `size` bytes."""
    lines = [b"# TYPE request_count counter\n"]
    i, total = 0, len(lines[0])
    while total < size:
        line = b'request_count{status_code="200",path="/items/%08d"} %d\n' % (i, i)
        lines.append(line)
        total += len(line)
        i += 1
    return b"".join(lines) + b"# TYPE queue_depth gauge\nqueue_depth 1\n"


def _write_scripted_contract(directory: Path) -> Path:
    return harness.write_contract(directory, SCRIPTED_CONTRACT, "scripted.yaml")


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("scripted")
    with ScriptedUpstream() as up, harness.sidecar(workdir, _write_scripted_contract(workdir), up.port,
                                                   node_metadata=SCRIPTED_POD, concurrency=1) as envoy:
        yield up, envoy


TEXT_PLAIN_004 = [("Content-Type", "text/plain; version=0.0.4")]
OM_HEADERS = [("Content-Type", "application/openmetrics-text; version=1.0.0; charset=utf-8")]
GZIP_BODY = gzip.compress(VALID, mtime=0)
PROTOBUF_CT = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"

# case -> (scripted answer, outcome counted, whether response headers must be untouched too)
PASS_THROUGH = {
    "malformed-labels": (Scripted(b'# TYPE x counter\nx{a="1" 1\n', headers=TEXT_PLAIN_004), "unparsable", False),
    "malformed-value": (Scripted(b"# TYPE x gauge\nx 1.2.3\n", headers=TEXT_PLAIN_004), "unparsable", False),
    "garbage-html": (Scripted(b"<html><body>Whitelabel Error Page</body></html>\n", headers=TEXT_PLAIN_004),
                     "unparsable", False),
    "truncated-text-no-final-newline": (Scripted(VALID[:-1], headers=TEXT_PLAIN_004), "unparsable", False),
    "truncated-text-mid-line": (Scripted(VALID[:70], headers=TEXT_PLAIN_004), "unparsable", False),
    "truncated-openmetrics-no-eof": (Scripted(OM_VALID[:-len(b"# EOF\n")], headers=OM_HEADERS), "unparsable",
                                     False),
    "openmetrics-content-after-eof": (Scripted(OM_VALID + b"queue_depth 4\n", headers=OM_HEADERS), "unparsable",
                                      False),
    "non-utf8-label-value": (Scripted(b'# TYPE x gauge\nx{a="caf\xe9 \xff\xfe"} 1\n', headers=TEXT_PLAIN_004),
                             "unparsable", False),
    "non-utf8-latin1-help": (Scripted(b"# HELP x Temp\xe9rature\n# TYPE x gauge\nx 1\n", headers=TEXT_PLAIN_004),
                             "unparsable", False),
    "too-large-content-length": (Scripted(big_exposition(MAX_BODY + 1), headers=TEXT_PLAIN_004), "too_large", True),
    "too-large-chunked": (Scripted(big_exposition(3 * MAX_BODY), headers=TEXT_PLAIN_004, framing="chunked",
                                   chunk=8192), "too_large", False),
    "too-large-one-byte-over-chunked": (Scripted(big_exposition(MAX_BODY)[:MAX_BODY + 1], headers=TEXT_PLAIN_004,
                                                 framing="chunked", chunk=MAX_BODY + 1), "too_large", False),
    "too-large-close-delimited": (Scripted(big_exposition(2 * MAX_BODY), headers=TEXT_PLAIN_004, framing="close"),
                                  "too_large", False),
    "gzip-ignoring-accept-encoding": (Scripted(GZIP_BODY, headers=[*TEXT_PLAIN_004, ("Content-Encoding", "gzip")]),
                                      "compressed", True),
    "gzip-chunked": (Scripted(GZIP_BODY, headers=[*TEXT_PLAIN_004, ("Content-Encoding", "gzip")], framing="chunked",
                              chunk=100), "compressed", True),
    "protobuf": (Scripted(b"\x3a\x0a\x0dgo_goroutines\x12\x0bNumber\x18\x01\x22\x0b\x12\x09\x09\x00\x00\x00\x00"
                          b"\x00\x00\x28\x40", headers=[("Content-Type", PROTOBUF_CT)]), "unsupported_format", True),
    "status-503": (Scripted(VALID, status=503, headers=TEXT_PLAIN_004), None, True),
    "status-500-malformed": (Scripted(b"internal error\n", status=500, headers=[("Content-Type", "text/plain")]),
                             None, True),
    "status-404": (Scripted(b"not found\n", status=404, headers=[("Content-Type", "text/html")]), None, True),
    "status-204-no-body": (Scripted(b"", status=204, framing="none"), None, True),
}


@pytest.mark.parametrize("case", list(PASS_THROUGH))
def test_unrewritable_bodies_pass_through_byte_identical(scripted, case):
    up, envoy = scripted
    answer, outcome, headers_untouched = PASS_THROUGH[case]
    path = f"/metrics?case={case}"
    up.answers[path] = answer
    before = self_metrics(envoy)
    resp = scrape(envoy.port, path)
    direct = scrape(up.port, path, accept=SCRAPE_ACCEPT, accept_encoding="identity")
    assert resp.status == answer.status                      # the scrape never fails because of metricpact
    assert resp.body == answer.body == direct.body           # byte-identical
    assert delta(before, self_metrics(envoy)) == ({outcome: 1} if outcome else {})
    if headers_untouched:
        for name in ("content-type", "content-length", "content-encoding", "transfer-encoding"):
            assert resp.header(name) == direct.header(name), name


def scrape_unparsable(scripted):
    up, envoy = scripted
    body = b'{"status":"UP","metrics":"see /actuator/prometheus"}'
    up.answers["/metrics?case=json"] = Scripted(body, headers=[("Content-Type", "application/json")])
    before = self_metrics(envoy)
    return body, scrape(envoy.port, "/metrics?case=json"), delta(before, self_metrics(envoy))


def test_unparsable_body_passes_through_byte_for_byte_and_is_counted(scripted):
    body, resp, counted = scrape_unparsable(scripted)
    assert resp.status == 200 and resp.body == body
    assert counted == {"unparsable": 1}
    assert resp.header("content-type") == TEXT_CT and resp.header("content-length") is None  # see below


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "NOT FIXED (by design for now): proxy-wasm in Envoy cannot hold the response headers and still receive "
    "the body (without allow_on_headers_stop_iteration, which Istio's WasmPlugin cannot set), so "
    "on_http_response_headers sets the canonical Content-Type and removes Content-Length before the body is "
    "seen; a body that then does not parse passes through byte-identical, but labelled "
    "`text/plain; version=0.0.4; charset=utf-8` and without its Content-Length"))
def test_unparsable_body_keeps_its_headers(scripted):
    body, resp, _ = scrape_unparsable(scripted)
    assert (resp.header("content-type"), resp.header("content-length")) == ("application/json", str(len(body)))


def test_valid_body_is_rewritten_and_counted(scripted):
    up, envoy = scripted
    up.answers["/metrics?case=valid"] = Scripted(VALID, headers=TEXT_PLAIN_004)
    up.answers["/actuator/prometheus"] = Scripted(VALID, headers=[("Content-Type", "text/plain;charset=UTF-8")],
                                                  framing="chunked", chunk=7)
    for path in ("/metrics?case=valid", "/actuator/prometheus"):
        before = self_metrics(envoy)
        resp = scrape(envoy.port, path)
        assert resp.status == 200
        assert resp.body == VALID_REWRITTEN, resp.body.decode()
        assert resp.header("content-type") == TEXT_CT and resp.header("content-length") is None
        assert delta(before, self_metrics(envoy)) == {"rewritten": 1}
    assert promtool(VALID_REWRITTEN) == (0, [])


def at_limit(rewrite_excess: int) -> bytes:
    """A body of exactly MAX_BODY bytes whose rewrite is exactly MAX_BODY + `rewrite_excess` bytes: a
    free comment (kept), VALID (rewritten to VALID_REWRITTEN) and a go_ family (dropped) as long as
    what the rewrite adds, less `rewrite_excess`."""
    dropped = len(VALID_REWRITTEN) - len(VALID) - rewrite_excess
    head = b"# TYPE go_padding gauge\ngo_padding{p=\"\"} 1\n"
    assert dropped >= len(head)
    go_family = head.replace(b'p=""', b'p="' + b"x" * (dropped - len(head)) + b'"')
    comment = b"#" * (MAX_BODY - len(VALID_REWRITTEN) + rewrite_excess - 1) + b"\n"
    body = comment + VALID + go_family
    assert len(body) == MAX_BODY
    return body


def test_body_exactly_at_the_limit_whose_rewrite_fits_is_rewritten(scripted):
    """max_body_bytes bounds the body read and the body written: both exactly at the limit is fine."""
    up, envoy = scripted
    body = at_limit(0)
    expected = body[:body.index(b"\n") + 1] + VALID_REWRITTEN
    assert len(expected) == MAX_BODY
    up.answers["/metrics?case=at-limit"] = Scripted(body, headers=TEXT_PLAIN_004, framing="chunked", chunk=10000)
    before = self_metrics(envoy)
    resp = scrape(envoy.port, "/metrics?case=at-limit")
    assert resp.status == 200 and resp.header("content-type") == TEXT_CT
    assert resp.body == expected
    assert delta(before, self_metrics(envoy)) == {"rewritten": 1}


@pytest.mark.parametrize("case", ["rewrite-one-byte-over", "injected-labels-grow-it"])
def test_body_at_the_limit_whose_rewrite_grows_past_it_passes_through(scripted, case):
    """A body within max_body_bytes whose rewrite would be larger passes through byte-identical and
    is counted as too_large (Envoy buffers the rewritten body too)."""
    up, envoy = scripted
    if case == "rewrite-one-byte-over":
        body = at_limit(1)
    else:
        body = big_exposition(MAX_BODY - 200)
        body += b"#" * (MAX_BODY - len(body) - 1) + b"\n"
        assert len(body) == MAX_BODY
    path = f"/metrics?case={case}"
    up.answers[path] = Scripted(body, headers=TEXT_PLAIN_004, framing="chunked", chunk=10000)
    before = self_metrics(envoy)
    resp = scrape(envoy.port, path)
    assert resp.status == 200 and resp.body == body
    assert delta(before, self_metrics(envoy)) == {"too_large": 1}
    # The headers were sent before the body was seen: canonical Content-Type, no Content-Length.
    assert resp.header("content-type") == TEXT_CT and resp.header("content-length") is None


@pytest.mark.parametrize("method,path", [("POST", "/metrics"), ("PUT", "/metrics"), ("HEAD", "/metrics"),
                                         ("GET", "/metrics/extra"), ("GET", "/api/metrics"), ("GET", "/"),
                                         ("GET", "/Metrics")])
def test_non_get_and_non_scrape_requests_are_untouched(scripted, method, path):
    up, envoy = scripted
    up.answers[path] = Scripted(VALID, headers=[("Content-Type", "text/plain"), ("X-App", "1")])
    before = self_metrics(envoy)
    resp = scrape(envoy.port, path, method=method, body=b"{}" if method in ("POST", "PUT") else None)
    assert resp.status == 200
    assert resp.body == (b"" if method == "HEAD" else VALID)
    assert resp.header("content-type") == "text/plain"
    assert resp.header("content-length") == str(len(VALID))
    assert resp.header("x-app") == "1"
    received = up.last(path).headers
    assert received["accept"] == PROMETHEUS2_ACCEPT
    assert received["accept-encoding"] == "gzip"
    assert delta(before, self_metrics(envoy)) == {}


@pytest.mark.parametrize("accept", [
    PROMETHEUS2_ACCEPT,
    f"{PROTOBUF_ACCEPT},application/openmetrics-text;version=1.0.0;q=0.8,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    OPENMETRICS_ACCEPT,
    PROTOBUF_THEN_TEXT_ACCEPT,
    PROTOBUF_ACCEPT,
    None,
], ids=["prometheus2", "protobuf-then-openmetrics", "openmetrics-only", "protobuf-then-text", "protobuf-only",
        "no-accept"])
def test_scrape_asks_the_app_for_text_uncompressed_whatever_the_scraper_asked(scripted, accept):
    up, envoy = scripted
    up.answers["/metrics?case=accept"] = Scripted(VALID, headers=TEXT_PLAIN_004)
    resp = scrape(envoy.port, "/metrics?case=accept", accept=accept, accept_encoding="gzip, deflate, br")
    assert resp.status == 200 and resp.body == VALID_REWRITTEN
    received = up.last("/metrics?case=accept").headers
    assert received["accept"] == SCRAPE_ACCEPT == "text/plain;version=0.0.4"
    assert received["accept-encoding"] == "identity"


def test_missing_required_metric_counted_once_per_scrape(scripted):
    up, envoy = scripted
    no_queue = b"".join(l + b"\n" for l in VALID.splitlines() if b"queue_depth" not in l)
    up.answers["/metrics?case=missing"] = Scripted(no_queue, headers=TEXT_PLAIN_004)
    up.answers["/metrics?case=missing-both"] = Scripted(b"# TYPE go_goroutines gauge\ngo_goroutines 1\n",
                                                        headers=TEXT_PLAIN_004)
    for _ in range(3):
        before = self_metrics(envoy)
        assert scrape(envoy.port, "/metrics?case=missing").status == 200
        assert delta(before, self_metrics(envoy)) == {"rewritten": 1, ("missing", "queue_depth"): 1}
    before = self_metrics(envoy)
    resp = scrape(envoy.port, "/metrics?case=missing-both")
    assert resp.status == 200 and resp.body == b""
    assert delta(before, self_metrics(envoy)) == {"rewritten": 1, ("missing", "queue_depth"): 1,
                                                  ("missing", "http_requests_total"): 1}
    # OpenMetrics: the counter family is request_count_total's, renamed; nothing is missing.
    up.answers["/metrics?case=om"] = Scripted(OM_VALID, headers=OM_HEADERS)
    before = self_metrics(envoy)
    resp = scrape(envoy.port, "/metrics?case=om")
    assert resp.header("content-type") == OPENMETRICS_CT
    parse_openmetrics(resp.text())
    assert delta(before, self_metrics(envoy)) == {"rewritten": 1}


# ---------------------------------------------------------------- the CLI gives the filter's bytes

# recorded sample (tests/data/expositions) -> (its example contract, the Content-Type its library sends)
CLI_SAMPLES = {
    "python_prometheus_client.txt": (ITEMS, "text/plain; version=0.0.4; charset=utf-8"),
    "python_prometheus_client.om.txt": (ITEMS, "application/openmetrics-text; version=1.0.0; charset=utf-8; "
                                               "escaping=underscores"),
    "node_prom_client.txt": (ORDERS, "text/plain; version=0.0.4; charset=utf-8"),
    "node_prom_client.om.txt": (ORDERS, "application/openmetrics-text; version=1.0.0; charset=utf-8"),
    "python_otel.txt": (CHECKOUT, "text/plain; version=0.0.4; charset=utf-8"),
    "python_otel.om.txt": (CHECKOUT, "application/openmetrics-text; version=1.0.0; charset=utf-8; "
                                     "escaping=underscores"),
}
CLI_NODE = {"NAME": "sample-pod-0", "NAMESPACE": "samples"}


@pytest.fixture(scope="module")
def sample_sidecars(tmp_path_factory):
    """One sidecar per example contract, all in front of one scripted upstream."""
    workdir = tmp_path_factory.mktemp("samples")
    with contextlib.ExitStack() as stack:
        up = stack.enter_context(ScriptedUpstream())
        envoys = {c: stack.enter_context(harness.sidecar(workdir, c, up.port, node_metadata=CLI_NODE, concurrency=1))
                  for c in (ITEMS, ORDERS, CHECKOUT)}
        yield up, envoys


def cli_rewrite(contract, body: bytes, content_type: str | None) -> bytes:
    args = [str(harness.CLI), "rewrite", "--contract", str(contract), "--node", f"NAME={CLI_NODE['NAME']}",
            "--node", f"NAMESPACE={CLI_NODE['NAMESPACE']}", "-"]
    if content_type is not None:
        args[2:2] = ["--content-type", content_type]
    res = subprocess.run(args, input=body, capture_output=True, timeout=30)
    assert res.returncode in (0, 1), res.stderr
    return res.stdout


@pytest.mark.parametrize("sample", list(CLI_SAMPLES))
def test_cli_rewrite_gives_the_filters_bytes(sample_sidecars, sample):
    up, envoys = sample_sidecars
    contract, content_type = CLI_SAMPLES[sample]
    body = (SAMPLES / sample).read_bytes()
    path = f"/metrics?sample={sample}"
    up.answers[path] = Scripted(body, headers=[("Content-Type", content_type)], framing="chunked", chunk=4096)
    resp = scrape(envoys[contract].port, path)
    assert resp.status == 200
    assert resp.body != body
    assert resp.body == cli_rewrite(contract, body, content_type)


# recorded OpenMetrics sample -> (its example contract, the check of its rewritten series)
OM_SAMPLES = {
    "python_prometheus_client.om.txt": (ITEMS, check_items),
    "node_prom_client.om.txt": (ORDERS, check_orders),
    "python_otel.om.txt": (CHECKOUT, check_checkout),
}


@pytest.mark.parametrize("announced", ["recorded", "bare-text-plain", "no-content-type"])
@pytest.mark.parametrize("sample", list(OM_SAMPLES))
def test_recorded_openmetrics_is_rewritten_exactly(sample_sidecars, sample, announced):
    """Each library's recorded OpenMetrics answer (the sidecar no longer gets OpenMetrics from the
    libraries that negotiate): with its recorded Content-Type it is rewritten as OpenMetrics; announced as
    bare text/plain or without a Content-Type it is converted to text that promtool parses. Either way
    with the exact series and values."""
    up, envoys = sample_sidecars
    contract, check = OM_SAMPLES[sample]
    body = (SAMPLES / sample).read_bytes()
    headers = {"recorded": [("Content-Type", CLI_SAMPLES[sample][1])], "bare-text-plain": [("Content-Type", "text/plain")],
               "no-content-type": []}[announced]
    path = f"/metrics?sample={sample}&announced={announced}"
    up.answers[path] = Scripted(body, headers=headers, framing="chunked", chunk=4096)
    before = self_metrics(envoys[contract])
    resp = scrape(envoys[contract].port, path)
    assert resp.status == 200
    assert delta(before, self_metrics(envoys[contract])) == {"rewritten": 1}
    fmt = "om" if announced == "recorded" else "text"
    assert resp.header("content-type") == (OPENMETRICS_CT if fmt == "om" else TEXT_CT)
    assert resp.body.endswith(b"# EOF\n") == (fmt == "om")
    series = series_of(resp.text(), fmt)
    labels = {"k8s_pod_name": CLI_NODE["NAME"], "k8s_namespace_name": CLI_NODE["NAMESPACE"]}
    check(series, labels, fmt)
    assert all({k: s[1].get(k) for k in labels} == labels for s in series)
    assert not [s[0] for s in series if s[0].startswith(RUNTIME_NOISE)]
    if fmt == "text":
        assert b"# EOF" not in resp.body and b"# UNIT" not in resp.body and b" # {" not in resp.body
        assert b" info\n" not in resp.body and b" stateset\n" not in resp.body
        rc, findings = promtool(resp.body)
        # Lint findings only: the `_created` gauges have no HELP, prom-client keeps its unit in the name.
        assert rc in (0, 3) and all(f.endswith("_created no help text") or "milliseconds" in f for f in findings), \
            findings


@pytest.mark.parametrize("content_type", ["text/plain", None], ids=["bare-text-plain", "no-content-type"])
@pytest.mark.parametrize("sample", list(OM_SAMPLES))
def test_cli_and_filter_agree_on_openmetrics_announced_as_text(sample_sidecars, sample, content_type):
    """`metricpact rewrite --content-type CT` decides the format as the sidecar does (Format::announced):
    an OpenMetrics body announced as text is converted to text by both. The app sent no Content-Type:
    `--content-type ''` (without the option the CLI detects the format from the body instead)."""
    up, envoys = sample_sidecars
    contract = OM_SAMPLES[sample][0]
    body = (SAMPLES / sample).read_bytes()
    path = f"/metrics?sample={sample}&ct={content_type}"
    up.answers[path] = Scripted(body, headers=[("Content-Type", content_type)] if content_type else [])
    resp = scrape(envoys[contract].port, path)
    assert resp.status == 200 and resp.header("content-type") == TEXT_CT
    assert b"http_requests_total_total" not in resp.body and not resp.body.endswith(b"# EOF\n")
    assert resp.body == cli_rewrite(contract, body, content_type or "")


# ---------------------------------------------------------------- the output bound
# Two injected labels grow every sample line: a rewrite can outgrow Envoy's buffer.
GROWING_CONTRACT = """
format: metricpact/v1
name: growing
version: 1.0.0
exposition:
  # max_body_bytes: the default (1000000), below Envoy's default 1 MiB buffer.
  inject_labels:
    - {name: k8s_pod_name, from: node.NAME}
    - {name: k8s_namespace_name, from: node.NAMESPACE}
"""


def _cli(contract: Path, body: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([str(harness.CLI), "rewrite", "--contract", str(contract), "--content-type", TEXT_CT,
                           "--node", f"NAME={SCRIPTED_POD['NAME']}", "--node", f"NAMESPACE={SCRIPTED_POD['NAMESPACE']}",
                           "-"], input=body, capture_output=True, timeout=60)


def test_rewrite_growing_past_envoys_buffer_limit_never_fails_the_scrape(tmp_path):
    """A 800 KB exposition whose rewrite (two injected labels) would be ~1.3 MB, past Envoy's 1 MiB
    buffer: the default max_body_bytes (1,000,000) bounds the rewrite too, so it passes through."""
    contract = harness.write_contract(tmp_path, GROWING_CONTRACT)
    body = big_exposition(800_000)
    unbounded = harness.write_contract(tmp_path, GROWING_CONTRACT.replace(
        "inject_labels:", "max_body_bytes: 4000000\n  inject_labels:"), "unbounded.yaml")
    full = _cli(unbounded, body)
    assert full.returncode == 0, full.stderr
    assert len(body) < 1_000_000 < (1 << 20) < len(full.stdout)
    cli = _cli(contract, body)
    assert cli.returncode == 1 and cli.stdout == body
    assert b"left unchanged: line 0: rewritten body larger than max_body_bytes" in cli.stderr, cli.stderr
    expected = body
    with ScriptedUpstream() as up, harness.sidecar(tmp_path, contract, up.port, node_metadata=SCRIPTED_POD,
                                                   concurrency=1) as envoy:
        up.answers["/metrics"] = Scripted(body, headers=TEXT_PLAIN_004)
        before = self_metrics(envoy)
        resp = scrape_surviving(envoy)
        assert resp.status == 200
        assert resp.body == expected
        assert delta(before, self_metrics(envoy)) == {"too_large": 1}


def scrape_surviving(envoy):
    """Scrapes /metrics through `envoy` and asserts that the scrape got an answer and Envoy is still
    running (an oversized rewrite once made Envoy crash)."""
    try:
        resp = scrape(envoy.port)
    except (OSError, http.client.HTTPException) as e:   # the scrape failed
        resp = e
    time.sleep(0.2)
    log = "\n".join(l for l in envoy.log_text().splitlines() if "critical" in l or "error" in l)[:1500]
    assert envoy.proc.poll() is None, f"Envoy died (scrape: {resp!r}):\n{log}"
    assert not isinstance(resp, Exception), f"the scrape failed: {resp!r}\n{log}"
    return resp


HELD_LAST_CONTRACT = GROWING_CONTRACT + """  drop_labels:
    - {label: pid, metrics: [request_count]}
"""


def held_last_exposition(size: int) -> bytes:
    """A valid text exposition of at least `size` bytes whose last family is request_count{pid}."""
    lines = [b"# TYPE queue_depth gauge\nqueue_depth 1\n# TYPE request_count counter\n"]
    i, total = 0, len(lines[0])
    while total < size:
        line = b'request_count{status_code="200",path="/items/%08d",pid="1"} %d\n' % (i, i)
        lines.append(line)
        total += len(line)
        i += 1
    return b"".join(lines)


def test_output_bound_counts_a_held_back_last_family(tmp_path):
    contract = harness.write_contract(tmp_path, HELD_LAST_CONTRACT)
    body = held_last_exposition(900_000)
    assert len(body) < 1_000_000
    with ScriptedUpstream() as up, harness.sidecar(tmp_path, contract, up.port, node_metadata=SCRIPTED_POD,
                                                   concurrency=1) as envoy:
        up.answers["/metrics"] = Scripted(body, headers=TEXT_PLAIN_004)
        before = self_metrics(envoy)
        resp = scrape_surviving(envoy)
        assert resp.status == 200 and resp.body == body
        assert delta(before, self_metrics(envoy)) == {"too_large": 1}
    cli = _cli(contract, body)
    assert cli.returncode == 1 and cli.stdout == body, (len(cli.stdout), cli.stderr)


EDGE_CONTRACT = """
format: metricpact/v1
name: edge
version: 1.0.0
exposition:
  rename_metrics:
    # OTel names without the unit suffix (what Prometheus 3's NoTranslation strategies produce).
    - {from: http_server_request_duration_seconds, to: http_server_request_duration}
  map_values:
    # Raw paths to a route template: the usual way to cut a label's cardinality.
    - {label: path, regex: '/users/[0-9]+', to: '/users/{id}'}
"""


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("edge")
    contract = harness.write_contract(workdir, EDGE_CONTRACT)
    assert harness.run_cli("check", str(contract), check=False).returncode == 0
    with ScriptedUpstream() as up, harness.sidecar(workdir, contract, up.port, concurrency=1) as envoy:
        yield up, envoy


def test_openmetrics_unit_line_stays_valid_after_a_rename(edge):
    """A rename that leaves the unit suffix drops the `# UNIT` line (it would be invalid OpenMetrics)."""
    up, envoy = edge
    body = (SAMPLES / "python_otel.om.txt").read_bytes()
    assert b"# UNIT http_server_request_duration_seconds seconds\n" in body
    up.answers["/metrics?case=unit"] = Scripted(body, headers=OM_HEADERS)
    resp = scrape(envoy.port, "/metrics?case=unit")
    assert resp.status == 200 and resp.header("content-type") == OPENMETRICS_CT
    assert b"# TYPE http_server_request_duration histogram\n" in resp.body
    assert b"http_server_request_duration_bucket{" in resp.body
    assert b"# UNIT" not in resp.body
    families, _ = parse_openmetrics(resp.text())
    assert [f.unit for f in families if f.name == "http_server_request_duration"] == [""]


def test_value_mapping_that_merges_series_sums_them(edge):
    up, envoy = edge
    body = (b"# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n"
            b'http_requests_total{path="/users/1"} 3\nhttp_requests_total{path="/users/2"} 4\n'
            b'http_requests_total{path="/health"} 1\n'
            b"# HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n"
            b'lat_seconds_bucket{path="/users/1",le="0.1"} 1\nlat_seconds_bucket{path="/users/1",le="+Inf"} 2\n'
            b'lat_seconds_sum{path="/users/1"} 0.5\nlat_seconds_count{path="/users/1"} 2\n'
            b'lat_seconds_bucket{path="/users/22",le="0.1"} 0\nlat_seconds_bucket{path="/users/22",le="+Inf"} 1\n'
            b'lat_seconds_sum{path="/users/22"} 0.25\nlat_seconds_count{path="/users/22"} 1\n')
    up.answers["/metrics?case=map"] = Scripted(body, headers=TEXT_PLAIN_004)
    resp = scrape(envoy.port, "/metrics?case=map")
    assert resp.status == 200
    series = series_of(resp.text(), "text")
    expect_exact(series, "http_requests_total", [({"path": "/users/{id}"}, 7.0), ({"path": "/health"}, 1.0)])
    users = {"path": "/users/{id}"}
    expect_exact(series, "lat_seconds_bucket", [({**users, "le": "0.1"}, 1.0), ({**users, "le": "+Inf"}, 3.0)])
    expect_exact(series, "lat_seconds_sum", [(users, 0.75)])
    expect_exact(series, "lat_seconds_count", [(users, 3.0)])
    assert promtool(resp.body) == (0, [])


def test_value_mapping_never_duplicates_gauge_series(edge):
    """Gauges are never summed; when a value map would merge two, they must stay two distinct series."""
    up, envoy = edge
    body = b'# TYPE inflight gauge\ninflight{path="/users/1"} 3\ninflight{path="/users/2"} 4\n'
    up.answers["/metrics?case=map-gauge"] = Scripted(body, headers=TEXT_PLAIN_004)
    resp = scrape(envoy.port, "/metrics?case=map-gauge")
    assert resp.status == 200
    series = series_of(resp.text(), "text")
    keys = [(n, tuple(sorted(l.items()))) for n, l, _, _ in series]
    assert len(keys) == len(set(keys)), resp.text()
    expect_exact(series, "inflight", [({"path": "/users/1"}, 3.0), ({"path": "/users/2"}, 4.0)])


def test_lines_no_rule_touches_are_copied_verbatim_with_value_maps(edge):
    up, envoy = edge
    body = b'# TYPE up_since gauge\nup_since{job="a"} 5 1700000000000\n# TYPE c_total counter\nc_total 3.0\n'
    up.answers["/metrics?case=verbatim"] = Scripted(body, headers=TEXT_PLAIN_004)
    resp = scrape(envoy.port, "/metrics?case=verbatim")
    assert resp.status == 200
    assert resp.body == body


def test_check_refuses_a_label_drop_that_would_sum_a_required_gauge(tmp_path):
    contract = harness.write_contract(tmp_path, """
format: metricpact/v1
name: gauges
version: 1.0.0
exposition:
  drop_labels:
    - label: queue
  require:
    - {name: inflight_jobs, type: gauge}
""")
    res = harness.run_cli("check", str(contract), check=False)
    assert res.returncode != 0
    assert "dropping `queue` would have to aggregate `inflight_jobs`, a gauge" in res.stdout + res.stderr, res
