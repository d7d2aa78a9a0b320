"""Hostile input through the real metricpact.wasm in a real Envoy. Requests carry label values
built to break the stat-name encoding or the exposition (`;.;`, `=.=`, quotes, backslashes,
CR/LF and NUL attempts, control and non-UTF-8 bytes, 59 KB and 64 KB headers, 10,000 distinct
values), and requests look like scrapes without being ones. Asserted on the whole
/stats/prometheus exposition: no forged metric, label or series, every metricpact series has
exactly the contract's labels, the series stay within the budget, and the client gets byte for
byte what the same Envoy without the filter gives it.

test_traffic.py already forges `;.;`/`=.=`/quote values in one header and one path; here every
case has its own route so each sanitized value is asserted exactly, and the responses are
compared with a filterless Envoy."""

import http.client
import http.server
import re
from collections import Counter

import pytest

from harness import ISTIO_NODE_METADATA, LocalHTTPServer, Route, raw_exchange, sidecar, wait_until, \
    without_volatile_headers, write_contract

REQUESTS = "http_server_requests_total"
DURATION = "http_server_request_duration_milliseconds"
ACTIVE = "http_server_active_requests"
POD = ISTIO_NODE_METADATA["NAME"]

HOSTILE_CONTRACT = """
format: metricpact/v1
name: hostile
version: 1.0.0
labels:
  - {name: http_request_method, from: request.method}
  - {name: http_route, from: request.route}
  - {name: http_response_status_code, from: response.status_code}
  - {name: tenant, from: request.header.x-tenant}
  - {name: k8s_pod_name, from: node.NAME}
routes:
  unmatched: raw
cardinality:
  max_value_length: 40
exposition:
  paths: [/metrics]
  rename_metrics:
    - {from: request_count, to: http_requests_total}
"""
LABELS = ["http_request_method", "http_route", "http_response_status_code", "tenant", "k8s_pod_name"]

APP_METRICS = (b"# HELP request_count Requests.\n# TYPE request_count counter\n"
               b'request_count{status_code="200"} 5\n# TYPE go_goroutines gauge\ngo_goroutines 12\n')


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    """Answers every method. Paths under /metrics and /app-metrics get a Prometheus exposition
    (an app serving its metrics); any other path gets the request back as the app saw it
    (request line, headers but Envoy's random x-request-id, body). Every response says which
    Accept and Accept-Encoding the app got."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _serve(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith(("/metrics", "/app-metrics")):
            out, content_type = APP_METRICS, "text/plain; version=0.0.4"
        else:
            lines = [f"{self.command} {self.path}"] + [f"{k}: {v}" for k, v in self.headers.items()
                                                     if k.lower() != "x-request-id"]
            out, content_type = ("\n".join(lines) + "\n").encode("latin-1") + body, "text/plain"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("X-Echo-Accept", self.headers.get("accept", "-"))
        self.send_header("X-Echo-Accept-Encoding", self.headers.get("accept-encoding", "-"))
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    def __getattr__(self, name):
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)


class EchoUpstream(LocalHTTPServer):
    def __init__(self):
        super().__init__(_EchoHandler)


@pytest.fixture(scope="module")
def envoys(tmp_path_factory):
    """(Envoy with metricpact, the same Envoy without it), in front of one echoing app."""
    workdir = tmp_path_factory.mktemp("hostile")
    contract = write_contract(workdir, HOSTILE_CONTRACT)
    with EchoUpstream() as up, sidecar(workdir, contract, up.port) as envoy, \
            sidecar(workdir, contract, up.port, filtered=False) as plain:
        yield envoy, plain
    assert_no_vm_trouble(envoy)


def assert_no_vm_trouble(envoy):
    log = envoy.log_text()
    for bad in ("panicked", "Uncaught", "VM failed", "[critical]"):
        assert bad not in log, f"{bad!r} in the Envoy log:\n{log[-3000:]}"
    assert not [line for line in log.splitlines() if "wasm log" in line and not line.startswith("[info]")]


def both(envoys, request: bytes) -> tuple:
    """The same raw request to both Envoys: what each client got, volatile headers removed."""
    out = []
    for envoy in envoys:
        raw, ended = raw_exchange(envoy.port, request, until_response=True)
        out.append((without_volatile_headers(raw), ended))
    return out[0], out[1]


def get(path: bytes, headers: bytes = b"", method: bytes = b"GET", version: bytes = b"HTTP/1.1",
        body: bytes = b"") -> bytes:
    length = b"Content-Length: %d\r\n" % len(body) if body else b""
    return (method + b" " + path + b" " + version + b"\r\nHost: app\r\nConnection: close\r\n" + length + headers
            + b"\r\n" + body)


def tenant(value: bytes) -> bytes:
    return b"x-tenant: " + value + b"\r\n"


# name -> (request headers, status the client gets, the tenant label counted). The path is
# /h/<name> (or PATHS[name]) and so is the route label. Requests Envoy's codec rejects (400, 431,
# 426) never reach the filter's header callbacks: they are counted with their status and the pod.
CASES = {
    # Values that would end a tag and start another, or rename the metric.
    "forge-tag": (tenant(b"a;.;k8s_pod_name=.=evil;.;"), 200, "a_._k8s_pod_name_._evil_._"),
    "forge-metric": (tenant(b";.;http_server_requests_total.evil=.=1"), 200, "_._http_server_requests_total.evil_._1"),
    "quotes-backslashes": (tenant(b'"} 1\\n\\" \\\\'), 200, "_}_1_n_____"),
    "comma-quotes": (tenant(b'a",k8s_pod_name="evil'), 200, "a_,k8s_pod_name__evil"),
    # CR/LF attempts: a bare CR inside a value, a bare LF ending the header early, obs-fold.
    "bare-cr": (tenant(b"a\rk8s_pod_name=.=evil"), 200, "ak8s_pod_name_._evil"),   # Envoy drops the CR
    "bare-lf": (b"x-tenant: a\nk8s_pod_name: evil\r\n", 200, "a"),
    "obs-fold": (b"x-tenant: a\r\n ;.;k8s_pod_name=.=evil\r\n", 200, "a__._k8s_pod_name_._evil"),  # unfolded: "a ;.;…"
    "tab": (tenant(b"a\tb"), 200, "a_b"),
    # Bytes Envoy's codec refuses before any filter sees the request.
    "nul": (tenant(b"a\x00b"), 400, None),
    "controls": (tenant(b"a\x01\x1b[31m"), 400, None),
    "nul-in-path": (b"", 400, None),
    "non-ascii-path": (b"", 400, None),
    "64k-header": (tenant(b"A" * 65536), 431, None),
    "http-1.0": (b"", 426, None),
    # Non-UTF-8 and non-ASCII values: every byte that is not printable ASCII (nor a space) becomes `_`
    # (Envoy hands invalid UTF-8 to the VM as U+FFFD, three bytes, so three `_` each).
    "non-utf8": (tenant(b"\xc3\x28\xff\xfe"), 200, "___(______"),
    "utf8": (tenant("caf\u00e9 \u2603".encode()), 200, "caf______"),
    # Long values are cut at max_value_length (40).
    "59k-header": (tenant(b"B" * (59 * 1024)), 200, "B" * 40),
    "duplicate-header": (tenant(b"first") + tenant(b"second;.;k8s_pod_name=.=evil"), 200, "first"),
}
PATHS = {
    "nul-in-path": b"/h/nul\x00x",
    "non-ascii-path": b"/h/caf\xc3\xa9",
    "http-1.0": b"/h/http-1.0",
}
# Hostile paths: the route label is the raw path (unmatched: raw), sanitized and cut.
PATH_CASES = {
    b"/h/p;.;k8s_pod_name=.=evil;.;": "/h/p_._k8s_pod_name_._evil_._",
    b"/h/%22%7D%20%0A%0D%00": "/h/%22%7D%20%0A%0D%00",
    b'/h/q"\\{id}': "/h/q__{id}",
    b"/h/" + b"x" * 100: "/h/" + "x" * 37,
    b"/h/a=.=b?tenant=.=x;.;": "/h/a_._b",
}
FORGED_METHODS = [b"get", b"G=.=T", b"GET;.;k8s_pod_name=.=evil", b"BREW", b"X" * 40]


def counted(envoy) -> Counter:
    """Requests counted per exact label set."""
    out = Counter()
    for s in envoy.scrape().series(REQUESTS):
        out[frozenset(s.labels.items())] += s.value
    return out


def test_hostile_values_are_sanitized_exactly_and_responses_are_unchanged(envoys):
    before = counted(envoys[0])
    expected = Counter()
    for name, (headers, status, tenant_label) in CASES.items():
        version = b"HTTP/1.0" if name == "http-1.0" else b"HTTP/1.1"
        request = get(PATHS.get(name, b"/h/" + name.encode()), headers, version=version)
        with_filter, without = both(envoys, request)
        assert with_filter == without, name
        assert with_filter[0].startswith(b"HTTP/1.1 %d " % status), (name, with_filter[0][:200])
        if status == 200:
            labels = {"http_request_method": "GET", "http_route": f"/h/{name}", "http_response_status_code": "200",
                      "tenant": tenant_label, "k8s_pod_name": POD}
        else:
            labels = {"http_response_status_code": str(status), "k8s_pod_name": POD}
        expected[frozenset(labels.items())] += 1
    for path, route in PATH_CASES.items():
        with_filter, without = both(envoys, get(path))
        assert with_filter == without, path
        assert with_filter[0].startswith(b"HTTP/1.1 200 "), (path, with_filter[0][:200])
        labels = {"http_request_method": "GET", "http_route": route, "http_response_status_code": "200",
                  "k8s_pod_name": POD}
        expected[frozenset(labels.items())] += 1
    # Methods that try to forge: Envoy's codec accepts only methods it knows (400 otherwise), so
    # none reaches the filter; a known one that is not in the contract's list becomes _OTHER.
    for method in FORGED_METHODS:
        with_filter, without = both(envoys, get(b"/h/method", method=method))
        assert with_filter == without
        assert with_filter[0].startswith(b"HTTP/1.1 400 "), (method, with_filter[0][:200])
        expected[frozenset({"http_response_status_code": "400", "k8s_pod_name": POD}.items())] += 1
    with_filter, without = both(envoys, get(b"/h/method", method=b"MKCOL"))
    assert with_filter == without
    expected[frozenset({"http_request_method": "_OTHER", "http_route": "/h/method",
                        "http_response_status_code": "200", "k8s_pod_name": POD}.items())] += 1

    assert counted(envoys[0]) - before == expected
    assert_no_forgery(envoys[0])


def assert_no_forgery(envoy, max_series=None):
    """The whole exposition: valid UTF-8, every line parses, every sample is Envoy's own
    (`envoy_*`, with `envoy_*` labels only), the filter's bookkeeping (`metricpact_*`, with
    `metricpact_*` labels only) or a contract metric with only contract labels, no label value
    carries an encoding separator, quote, backslash or control character, and, with a budget,
    no contract metric has more series than it allows (+1 overflow series)."""
    raw = envoy.scrape_text().encode()
    raw.decode("utf-8", errors="strict")
    expo = envoy.scrape()  # raises on any line it cannot parse
    allowed = {
        REQUESTS: set(LABELS), ACTIVE: {"http_request_method", "http_route", "tenant", "k8s_pod_name"},
        f"{DURATION}_bucket": set(LABELS) | {"le"}, f"{DURATION}_sum": set(LABELS), f"{DURATION}_count": set(LABELS),
    }
    names_seen = set()
    per_metric = Counter()
    for s in expo.samples:
        names_seen.add(s.name)
        if s.name.startswith("envoy_"):
            assert all(k.startswith("envoy_") or k == "le" for k in s.labels), s
        elif s.name == "metricpact_contract_info":  # the contract, and the pod's identity (node labels)
            assert {k for k in s.labels if not k.startswith("metricpact_")} == {"k8s_pod_name"}, s
            assert s.labels["k8s_pod_name"] == POD, s
        elif s.name.startswith("metricpact_"):   # the filter's own bookkeeping: metricpact_* labels only
            assert all(k.startswith("metricpact_") for k in s.labels), s
        else:
            assert s.name in allowed, f"unexpected metric {s.name}{s.labels}"
            assert set(s.labels) <= allowed[s.name], s
            assert s.labels.get("k8s_pod_name") == POD, s
            if s.name in (REQUESTS, ACTIVE, f"{DURATION}_count"):
                per_metric[s.name] += 1
        for value in s.labels.values():
            assert ";.;" not in value and "=.=" not in value and not re.search(r'["\\\x00-\x1f\x7f]', value), s
    assert {REQUESTS, ACTIVE, "metricpact_contract_info"} <= names_seen
    # The exact set of label names the request counter carries, over all its series.
    assert set().union(*(s.labels for s in expo.series(REQUESTS))) == set(LABELS)
    assert not [line for line in raw.decode().splitlines() if "evil" in line.split("{")[0]]
    if max_series is not None:
        for name, n in per_metric.items():
            assert n <= max_series + 1, f"{name}: {n} series for a budget of {max_series}"
    return per_metric


# ---------------------------------------------------------------- responses that look like scrapes

SCRAPE_LOOKALIKES = {
    # Non-GET methods on the scrape path, with and without a body that looks like metrics.
    "post-metrics-body": get(b"/metrics", method=b"POST", body=b"# TYPE forged counter\nforged_total 1\n"),
    "put-metrics": get(b"/metrics", method=b"PUT", body=b"x"),
    "delete-metrics": get(b"/metrics", method=b"DELETE"),
    "options-metrics": get(b"/metrics", method=b"OPTIONS"),
    "head-metrics": get(b"/metrics", method=b"HEAD"),
    # Paths that are not the configured one (the app may well serve its metrics there).
    "trailing-slash": get(b"/metrics/"),
    "double-slash": get(b"//metrics"),
    "dot-segment": get(b"/./metrics"),
    "percent-encoded": get(b"/%6Detrics"),
    "semicolon": get(b"/metrics;x=1"),
    "app-metrics": get(b"/app-metrics"),
    "echo": get(b"/h/echo", headers=b"accept: text/plain\r\naccept-encoding: gzip\r\n"),
}


@pytest.mark.parametrize("case", list(SCRAPE_LOOKALIKES))
def test_anything_but_a_get_of_a_scrape_path_is_byte_identical_to_no_filter(envoys, case):
    envoy = envoys[0]
    before = outcomes(envoy)
    with_filter, without = both(envoys, SCRAPE_LOOKALIKES[case])
    assert with_filter == without
    assert with_filter[0].startswith(b"HTTP/1.1 200 OK\r\n") and with_filter[1] in ("complete", "eof")
    assert outcomes(envoy) == before  # not a scrape: nothing rewritten, nothing passed through


def test_the_scrape_path_itself_is_rewritten(envoys):
    """The control for the test above: a GET of /metrics through the same sidecar is a scrape."""
    before = outcomes(envoys[0])
    with_filter, without = both(envoys, get(b"/metrics?x=1", headers=b"accept-encoding: gzip\r\n"))
    assert with_filter != without
    assert b'http_requests_total{status_code="200"} 5\n' in with_filter[0]
    assert b"x-echo-accept-encoding: identity\r\n" in with_filter[0]
    assert b"x-echo-accept-encoding: gzip\r\n" in without[0]
    assert outcomes(envoys[0])["rewritten"] == before["rewritten"] + 1


def outcomes(envoy) -> dict:
    expo = envoy.scrape()
    return {s.labels["metricpact_result"]: s.value for s in expo.series("metricpact_exposition_scrapes_total")}


# ---------------------------------------------------------------- 10,000 distinct values

BUDGET_CONTRACT = """
format: metricpact/v1
name: budget
version: 1.0.0
labels:
  - {name: http_request_method, from: request.method}
  - {name: http_route, from: request.route, max_values: 200}
  - {name: http_response_status_code, from: response.status_code}
  - {name: tenant, from: request.header.x-tenant, max_values: 50}
  - {name: k8s_pod_name, from: node.NAME}
routes:
  unmatched: raw
cardinality:
  max_series: 100
"""
DISTINCT = 10_000


def test_ten_thousand_distinct_hostile_values_stay_within_the_budgets(workdir, upstream):
    """Every request has its own path and tenant, each also trying to forge a tag. One
    connection, so one worker sees them in order: the first 100 combinations get series, the
    rest share the overflow series; labels beyond their budgets are _OTHER."""
    contract = write_contract(workdir, BUDGET_CONTRACT)
    with sidecar(workdir, contract, upstream.port, routes=[Route("/", direct=200)]) as envoy:
        conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
        try:
            for i in range(DISTINCT):
                conn.request("GET", f"/v/{i};.;k8s_pod_name=.=evil{i}",
                             headers={"x-tenant": f't{i};.;k8s_pod_name=.=evil{i}"\\'})
                resp = conn.getresponse()
                assert (resp.status, resp.read()) == (200, b"ok\n"), i
        finally:
            conn.close()
        expo = wait_until(lambda: (e := envoy.scrape()).total(f"{DURATION}_count") == DISTINCT and e,
                          what="every request in the duration histogram")
        per_metric = assert_no_forgery(envoy, max_series=100)
        assert_no_vm_trouble(envoy)

    assert per_metric == {REQUESTS: 101, ACTIVE: 101, f"{DURATION}_count": 101}
    assert expo.total(REQUESTS) == DISTINCT
    overflow = {"http_request_method": "_OTHER", "http_route": "_OTHER", "http_response_status_code": "_OTHER",
                "tenant": "_OTHER", "k8s_pod_name": POD}
    assert expo.value(REQUESTS, **overflow) == DISTINCT - 100
    for i in range(100):
        labels = {"http_request_method": "GET", "http_route": f"/v/{i}_._k8s_pod_name_._evil{i}",
                  "http_response_status_code": "200",
                  "tenant": f"t{i}_._k8s_pod_name_._evil{i}__" if i < 50 else "_OTHER", "k8s_pod_name": POD}
        matching = [s for s in expo.series(REQUESTS) if s.labels == labels]
        assert len(matching) == 1 and matching[0].value == 1, labels
    assert expo.value("metricpact_label_overflow_total", metricpact_label="tenant") == DISTINCT - 50
    assert expo.value("metricpact_label_overflow_total", metricpact_label="http_route") == DISTINCT - 200
    assert expo.value("metricpact_series_overflow_total", metricpact_metric=REQUESTS) == DISTINCT - 100
    assert expo.value("metricpact_series_overflow_total", metricpact_metric=ACTIVE) == DISTINCT - 100
    assert {s.value for s in expo.series(ACTIVE)} == {0}
