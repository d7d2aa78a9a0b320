"""Upstream faults through the real metricpact.wasm in a real Envoy: an upstream that refuses
connections, drops them before or in the middle of a response, stalls past the route timeout,
or answers with bytes that are not HTTP. Every request is still counted once, with the exact
status and `error_type` Envoy's response details give, its in-flight mark ends, and the client
gets exactly what the same Envoy without the filter gives it (compared byte for byte, and how
the connection ended)."""

import socket
import struct

import pytest

from harness import RawTcpServer, Route, raw_exchange, sidecar, wait_until, without_volatile_headers, write_contract

REQUESTS = "http_server_requests_total"
DURATION = "http_server_request_duration_milliseconds"
ACTIVE = "http_server_active_requests"
POD = "cart-7d9f8b6c5-x2x8k"

# The raw path is the route label, so every case has its own series.
FAULTS_CONTRACT = """
format: metricpact/v1
name: faults
version: 1.0.0
labels:
  - {name: http_request_method, from: request.method}
  - {name: http_route, from: request.route}
  - {name: http_response_status_code, from: response.status_code}
  - {name: error_type, from: response.error_type}
  - {name: k8s_pod_name, from: node.NAME}
routes:
  unmatched: raw
"""

ROUTE_TIMEOUT = "0.5s"
PARTIAL_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n"
PARTIAL_BODY = b"x" * 100


class FaultyUpstream(RawTcpServer):
    """A raw TCP server on 127.0.0.1: reads one request per connection, then misbehaves as the
    first path segment says (`/rst-mid/...` etc., see `serve`). Stalls end when it stops."""

    connection_timeout = 10

    def serve(self, conn):
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            kind = data.split(b" ", 2)[1].split(b"/")[1].decode()
            if kind == "ok":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n")
            elif kind == "app-502":          # the app itself answers 502
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\n"
                             b"app down\n")
            elif kind == "close-before":     # FIN without a byte of response
                pass
            elif kind == "rst-before":       # RST without a byte of response
                _reset(conn)
            elif kind == "rst-mid":          # headers and 100 of 1000 body bytes, then RST
                conn.sendall(PARTIAL_HEAD + PARTIAL_BODY)
                self.stopping.wait(0.1)
                _reset(conn)
            elif kind == "close-mid":        # the same, then FIN
                conn.sendall(PARTIAL_HEAD + PARTIAL_BODY)
                self.stopping.wait(0.1)
            elif kind == "garbage":          # not HTTP at all (a TLS record, then text)
                conn.sendall(b"\x16\x03\x01\x02\x00garbage, not HTTP\r\n\r\n")
            elif kind == "bad-header":       # an HTTP status line, then an invalid Content-Length
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\nok\n")
            elif kind == "stall-head":       # nothing until after the route timeout
                self.stopping.wait(2)
            elif kind == "stall-mid":        # headers and part of the body, then nothing
                conn.sendall(PARTIAL_HEAD + PARTIAL_BODY)
                self.stopping.wait(2)
            else:
                raise ValueError(kind)
        except OSError:
            pass
        finally:
            conn.close()


def _reset(conn):
    """Makes the coming close() send a TCP RST instead of a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.fixture(scope="module")
def envoys(tmp_path_factory):
    """(Envoy with metricpact, the same Envoy without it), both in front of one FaultyUpstream."""
    workdir = tmp_path_factory.mktemp("faults")
    contract = write_contract(workdir, FAULTS_CONTRACT)
    routes = [Route("/refused", cluster="dead"), Route("/stall", timeout=ROUTE_TIMEOUT), Route("/")]
    with FaultyUpstream() as up, \
            sidecar(workdir, contract, up.port, routes=routes) as envoy, \
            sidecar(workdir, contract, up.port, routes=routes, filtered=False) as plain:
        yield envoy, plain
        log = envoy.log_text()
    assert "panicked" not in log and "Uncaught" not in log and "VM failed" not in log, log[-3000:]


def both(envoys, path: str) -> tuple:
    """Sends the same request to both Envoys; returns what each client got (bytes, how the
    connection ended), volatile headers removed."""
    request = b"GET %s HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n" % path.encode()
    outcomes = []
    for envoy in envoys:
        raw, ended = raw_exchange(envoy.port, request, timeout=10)
        outcomes.append((without_volatile_headers(raw), ended))
    return outcomes[0], outcomes[1]


def local_reply(status: str, body: bytes) -> bytes:
    """Envoy's own error response (no upstream headers), as the client gets it."""
    return (b"HTTP/1.1 %s\r\ncontent-length: %d\r\ncontent-type: text/plain\r\nserver: envoy\r\n"
            b"connection: close\r\n\r\n%s" % (status.encode(), len(body), body))


UPSTREAM_GONE = b"upstream connect error or disconnect/reset before headers. reset reason: "

# case -> (status counted, error_type counted (None: absent), what the client gets)
# Envoy's response details for each (what error_type is derived from), as an access log shows them:
#   refused       upstream_reset_before_response_started{remote_connection_failure|...}  UF
#   close/rst-before  upstream_reset_before_response_started{connection_termination}  UC
#   garbage, bad-header  upstream_reset_before_response_started{protocol_error}  UPE
#   stall-head    response_timeout  UT;     app-502  via_upstream
FAILED_BEFORE_RESPONSE = {
    "refused": ("503", "connection_failure", local_reply("503 Service Unavailable",
                                                         UPSTREAM_GONE + b"remote connection failure")),
    "close-before": ("503", "connection_failure", local_reply("503 Service Unavailable",
                                                              UPSTREAM_GONE + b"connection termination")),
    "rst-before": ("503", "connection_failure", local_reply("503 Service Unavailable",
                                                            UPSTREAM_GONE + b"connection termination")),
    "garbage": ("502", "upstream_reset", local_reply("502 Bad Gateway", UPSTREAM_GONE + b"protocol error")),
    "bad-header": ("502", "upstream_reset", local_reply("502 Bad Gateway", UPSTREAM_GONE + b"protocol error")),
    "stall-head": ("504", "timeout", local_reply("504 Gateway Timeout", b"upstream request timeout")),
    "app-502": ("502", "502", b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: 9\r\n"
                              b"server: envoy\r\nconnection: close\r\n\r\napp down\n"),
}


def labels(route, status, error_type=None):
    out = {"http_request_method": "GET", "http_route": route, "http_response_status_code": status,
           "error_type": error_type, "k8s_pod_name": POD}
    return {k: v for k, v in out.items() if v is not None}


def counted_once(envoy, route, status, error_type):
    """The request to `route` is exactly one series with exactly these labels, timed once, and no
    longer in flight."""
    want = labels(route, status, error_type)
    expo = wait_until(lambda: (e := envoy.scrape()).total(f"{DURATION}_count", http_route=route) == 1 and e,
                      what=f"the duration of {route} (stats flush)")
    series = [s for s in expo.series(REQUESTS) if s.labels.get("http_route") == route]
    assert [(s.labels, s.value) for s in series] == [(want, 1)]
    histograms = [s.labels for s in expo.series(f"{DURATION}_count") if s.labels.get("http_route") == route]
    assert histograms == [want]
    active = [(s.labels, s.value) for s in expo.series(ACTIVE) if s.labels.get("http_route") == route]
    assert active == [({"http_request_method": "GET", "http_route": route, "k8s_pod_name": POD}, 0)]


@pytest.mark.parametrize("case", list(FAILED_BEFORE_RESPONSE))
def test_failure_before_any_response_is_counted_with_its_error_type_and_the_client_sees_no_difference(envoys, case):
    status, error_type, client_gets = FAILED_BEFORE_RESPONSE[case]
    path = f"/{case}/1"
    with_filter, without = both(envoys, path)
    assert with_filter == without
    assert with_filter == (client_gets, "eof")
    counted_once(envoys[0], path, status, error_type)


MID_RESPONSE = ["rst-mid", "close-mid", "stall-mid"]


@pytest.mark.parametrize("case", MID_RESPONSE)
def test_failure_in_the_middle_of_a_response_is_counted_once_and_the_client_sees_no_difference(envoys, case):
    """The upstream's 200 and part of its body reached the client, then the upstream reset,
    closed, or stalled past the route timeout: the client gets the same truncated response and
    the same closed connection with and without the filter."""
    path = f"/{case}/1"
    with_filter, without = both(envoys, path)
    assert with_filter == without
    truncated = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1000\r\nserver: envoy\r\n"
                 b"connection: close\r\n\r\n" + PARTIAL_BODY)
    assert with_filter == (truncated, "eof")
    expo = wait_until(lambda: (e := envoys[0].scrape()).total(f"{DURATION}_count", http_route=path) == 1 and e,
                      what="stats flush")
    series = [s for s in expo.series(REQUESTS) if s.labels.get("http_route") == path]
    assert len(series) == 1 and series[0].value == 1
    assert series[0].labels["http_response_status_code"] == "200"   # what the client was sent
    assert expo.value(ACTIVE, http_route=path) == 0


@pytest.mark.parametrize("case, error_type", [("rst-mid", "upstream_reset"), ("close-mid", "upstream_reset"),
                                              ("stall-mid", "timeout")])
def test_failure_in_the_middle_of_a_response_carries_an_error_type(envoys, case, error_type):
    path = f"/{case}/2"
    both(envoys, path)
    counted_once(envoys[0], path, "200", error_type)


def test_healthy_requests_around_the_faults_are_counted_plainly(envoys):
    """Faults leave nothing behind: a normal request after them is a success with no error_type."""
    for case in ["rst-mid", "refused", "ok"]:
        both(envoys, f"/{case}/3")
    with_filter, without = both(envoys, "/ok/4")
    assert with_filter == without
    assert with_filter == (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\nserver: envoy\r\n"
                           b"connection: close\r\n\r\nok\n", "eof")
    counted_once(envoys[0], "/ok/4", "200", None)
