"""gRPC through a real Envoy running metricpact.wasm, with real grpcio clients and servers over
h2c, measured with contracts/grpc-service.yaml (plus the numeric status and the service alone,
the other gRPC sources). Every call shape gets its exact series: unary OK and the caller's
NOT_FOUND (no error), trailers-only UNAVAILABLE and an INTERNAL sent in real trailers after the
headers (server errors), an unknown method (UNIMPLEMENTED), a client deadline, a server-streaming
and a bidi call (one request each, timed to the end of the stream, active while open), a stream
reset by the upstream mid-response (a raw HTTP/2 server: no gRPC library does that on purpose),
and a plain HTTP request next to them (no gRPC label at all, although Envoy reports a gRPC
status for it too).

Then the Istio-equivalent path with one gRPC pod (port named `grpc`, so the inbound cluster
speaks HTTP/2 to the app as Istio's cluster builder sets it up): a real Prometheus scraping it with
Istio's sample job, and the RENDERED KEDA trigger, prometheus-adapter rule and recording rules
report its per-pod call rate and error ratio under a known steady load."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import time
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
import yaml

import harness
from istio import IstioPod, PrometheusAdapter, Process, Sidecar, keda_metric, render
from scrape import ClusterPod, IstioAgent, PodNetwork, ScrapePrometheus, istio_sample_pod_jobs

ROOT = harness.ROOT
GRPC_APP = ROOT / "tests/apps/grpc_app.py"
INVENTORY = "shop.v1.Inventory"
BROKEN = "shop.v1.Broken"
COUNTER = "rpc_server_requests_total"
HISTOGRAM = "rpc_server_call_duration_milliseconds"
ACTIVE = "rpc_server_active_calls"
# The pod identity every series carries (harness.ISTIO_NODE_METADATA), and the constant system.
IDENTITY = {"rpc_system_name": "grpc", "k8s_pod_name": "cart-7d9f8b6c5-x2x8k", "k8s_namespace_name": "shop",
            "k8s_workload_name": "cart", "service_name": "cart", "k8s_cluster_name": "Kubernetes"}
# The traffic labels, in the order a series key lists them ("" = absent).
TRAFFIC = ("rpc_method", "rpc_service", "rpc_grpc_status_code", "rpc_response_status_code", "error_type")
HTTP2_UPSTREAM = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


def grpc_contract(directory: Path, **autoscaling) -> Path:
    """contracts/grpc-service.yaml with the two other gRPC sources as labels: the numeric status
    (Istio's grpc_response_status) and the service alone (pre-1.39 semconv's rpc.service)."""
    data = yaml.safe_load((ROOT / "contracts/grpc-service.yaml").read_text())
    names = [label["name"] for label in data["labels"]]
    at = names.index("rpc_response_status_code")
    data["labels"][at:at] = [{"name": "rpc_service", "from": "request.grpc_service"},
                             {"name": "rpc_grpc_status_code", "from": "response.grpc_status"}]
    data["autoscaling"].update(autoscaling)
    path = directory / "grpc-service.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def start_grpc_app(stack: contextlib.ExitStack, workdir: Path, name: str = "grpc-app") -> int:
    """tests/apps/grpc_app.py on a free port, once its health method answers."""
    port = harness.free_port()
    app = stack.enter_context(Process(name, [sys.executable, GRPC_APP, "--port", str(port)], workdir / f"{name}.log"))
    channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{port}"))
    check = channel.unary_unary("/grpc.health.v1.Health/Check")

    def serving():
        app.check_running()
        try:
            return check(b"", timeout=1) == b"\x08\x01"
        except grpc.RpcError:
            return False

    harness.wait_until(serving, timeout=20, what=f"{name} on port {port}")
    return port


class ResettingUpstream(harness.RawTcpServer):
    """An h2c server that answers every stream with gRPC response headers and one message, then
    resets the stream (RST_STREAM INTERNAL_ERROR): an app crashing mid-response."""

    def __init__(self):
        super().__init__()
        self.streams = 0

    def serve(self, conn: socket.socket):
        h2conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
        h2conn.initiate_connection()
        with conn:
            try:
                conn.sendall(h2conn.data_to_send())
                while data := conn.recv(65536):
                    for event in h2conn.receive_data(data):
                        if isinstance(event, h2.events.RequestReceived):
                            self.streams += 1
                            h2conn.send_headers(event.stream_id, [(":status", "200"), ("content-type", "application/grpc")])
                            h2conn.send_data(event.stream_id, b"\x00\x00\x00\x00\x04item")
                            conn.sendall(h2conn.data_to_send())
                            time.sleep(0.05)
                            h2conn.reset_stream(event.stream_id, error_code=2)
                        elif isinstance(event, h2.events.DataReceived):
                            h2conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    conn.sendall(h2conn.data_to_send())
            except (OSError, h2.exceptions.ProtocolError):
                return


class GrpcSidecar:
    """The grpc app and the resetting upstream behind one Envoy running metricpact."""

    def __init__(self, envoy: harness.Envoy, channel: grpc.Channel, reset: ResettingUpstream):
        self.envoy, self.channel, self.reset = envoy, channel, reset

    def call(self, method: str, request: bytes, timeout=10):
        return self.channel.unary_unary(f"/{INVENTORY}/{method}")(request, timeout=timeout)

    def series(self) -> dict:
        """{traffic labels: (count, histogram count, {le: cumulative})} of every call series; every
        series must carry the pod's identity."""
        expo = self.envoy.scrape()
        out = {}
        for sample in expo.series(COUNTER):
            identity = {k: sample.labels.get(k) for k in IDENTITY}
            assert identity == IDENTITY, sample.labels
            assert set(sample.labels) <= set(IDENTITY) | set(TRAFFIC), sample.labels
            key = tuple(sample.labels.get(k, "") for k in TRAFFIC)
            selector = {k: v for k, v in zip(TRAFFIC, key) if v}
            observed = [s for s in expo.series(f"{HISTOGRAM}_count")
                        if {k: s.labels.get(k, "") for k in TRAFFIC} == dict(zip(TRAFFIC, key))]
            buckets = {le: v for le, v in expo.buckets(HISTOGRAM, **selector).items()} if observed else {}
            out[key] = (sample.value, sum(s.value for s in observed), buckets)
        return out

    def delta(self, action, calls: int) -> dict:
        """The series `action()` added to, with their counts, once `calls` requests were counted
        (a stream is counted when Envoy is done with it, which can be after the client is) and
        the histograms have flushed."""
        before = self.series()
        action()
        result = {}

        def flushed():
            nonlocal result
            after = self.series()
            result = {}
            for key, (count, observed, buckets) in after.items():
                old = before.get(key, (0, 0, {}))
                if count != old[0] or observed != old[1]:
                    result[key] = (count - old[0], observed - old[1],
                                   {le: v - old[2].get(le, 0) for le, v in buckets.items()})
            total = sum(count for count, _, _ in result.values())
            assert total <= calls, result
            return total == calls and all(count == observed for count, observed, _ in result.values())

        harness.wait_until(flushed, timeout=10, what="histogram counts matching the counter")
        return result

    def active(self) -> float:
        return self.envoy.scrape().total(ACTIVE)


def key(method: str, code: str = "", name: str = "", error: str = "", service: str = INVENTORY) -> tuple:
    full = f"{service}/{method}" if method else ""
    return (full, service if method else "", code, name, error)


def counts(delta: dict) -> dict:
    return {k: count for k, (count, _, _) in delta.items()}


def bucket_of(buckets: dict) -> tuple[float, float]:
    """(lower, upper] of the one observation in a histogram delta."""
    bounds = sorted((float(le), v) for le, v in buckets.items())
    upper = next(b for b, v in bounds if v == 1)
    lower = max([b for b, v in bounds if v == 0 and b < upper], default=0.0)
    return lower, upper


def assert_in_bucket(buckets: dict, at_least_ms: float, at_most_ms: float):
    """The one observation's bucket is the one the designed duration (at least `at_least_ms`,
    at most the client's own elapsed time) falls in."""
    lower, upper = bucket_of(buckets)
    assert upper >= at_least_ms and lower < at_most_ms, (lower, upper, at_least_ms, at_most_ms)


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("grpc")
    contract = grpc_contract(workdir)
    plugin_config, stats = harness.compile_contract(contract)
    with contextlib.ExitStack() as stack:
        app_port = start_grpc_app(stack, workdir)
        reset = stack.enter_context(ResettingUpstream())
        config = harness.bootstrap(
            listener_port=harness.free_port(), admin_port=harness.free_port(), upstream_port=app_port,
            http_filters=[harness.wasm_http_filter(plugin_config)], stats_config=stats,
            node_metadata=harness.ISTIO_NODE_METADATA,
            routes=[harness.Route("/plain", direct=200), harness.Route(f"/{BROKEN}/", cluster="broken"), harness.Route("/")])
        clusters = config["static_resources"]["clusters"]
        clusters.append(harness._cluster("broken", reset.port))
        for cluster in clusters:
            if cluster["name"] in ("app", "broken"):
                cluster["typed_extension_protocol_options"] = HTTP2_UPSTREAM
        envoy = stack.enter_context(harness.Envoy(config, workdir))
        channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{envoy.port}"))
        yield GrpcSidecar(envoy, channel, reset)
        assert envoy.proc.poll() is None, envoy.log_text()[-2000:]


def test_unary_calls_are_labelled_by_their_grpc_status(sidecar):
    def calls():
        for _ in range(3):
            assert sidecar.call("Get", b"ok") == b"item"
        for request, code in ((b"not_found", grpc.StatusCode.NOT_FOUND), (b"not_found", grpc.StatusCode.NOT_FOUND),
                              (b"unavailable", grpc.StatusCode.UNAVAILABLE), (b"late:internal", grpc.StatusCode.INTERNAL)):
            with pytest.raises(grpc.RpcError) as failed:
                sidecar.call("Get", request)
            assert failed.value.code() == code
        with pytest.raises(grpc.RpcError) as failed:
            sidecar.channel.unary_unary(f"/{INVENTORY}/Nope")(b"", timeout=10)
        assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED

    delta = sidecar.delta(calls, 8)
    assert counts(delta) == {
        key("Get", "0", "OK"): 3,
        # The caller's mistake: a status, no error (OTel's gRPC server rules).
        key("Get", "5", "NOT_FOUND"): 2,
        # Trailers-only (grpcio aborts before any message): the status is in the headers.
        key("Get", "14", "UNAVAILABLE", "UNAVAILABLE"): 1,
        # Headers first, the status in real trailers.
        key("Get", "13", "INTERNAL", "INTERNAL"): 1,
        # A method the server does not know: the proxy cannot tell, the status does.
        key("Nope", "12", "UNIMPLEMENTED", "UNIMPLEMENTED"): 1,
    }


def test_a_slow_call_is_timed_into_its_bucket(sidecar):
    elapsed = []

    def call():
        started = time.perf_counter()
        assert sidecar.call("Get", b"sleep:150") == b"item"
        elapsed.append((time.perf_counter() - started) * 1000)

    delta = sidecar.delta(call, 1)
    assert counts(delta) == {key("Get", "0", "OK"): 1}
    assert bucket_of(delta[key("Get", "0", "OK")][2]) == (100, 250), elapsed


def test_a_client_deadline_is_one_failed_call(sidecar):
    """The client gives up after 300 ms; the server sleeps 1 s. Two outcomes race, both right: the
    client's RST_STREAM reaches the sidecar first (no status was sent; the client went away), or
    grpcio's server, which knows the deadline from grpc-timeout, answers DEADLINE_EXCEEDED first."""
    elapsed = []

    def call():
        started = time.perf_counter()
        with pytest.raises(grpc.RpcError) as failed:
            sidecar.call("Get", b"sleep:1000", timeout=0.3)
        elapsed.append((time.perf_counter() - started) * 1000)
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    delta = sidecar.delta(call, 1)
    outcomes = ({key("Get", error="downstream_disconnect"): 1},
                {key("Get", "4", "DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"): 1})
    assert counts(delta) in outcomes, counts(delta)
    (_, _, buckets), = delta.values()
    assert_in_bucket(buckets, 300, elapsed[0])


def test_a_server_stream_is_one_call_timed_to_its_end_and_active_while_open(sidecar):
    messages, open_calls, elapsed = [], [], []

    def stream():
        started = time.perf_counter()
        for message in sidecar.channel.unary_stream(f"/{INVENTORY}/List")(b"6:100", timeout=10):
            messages.append(message)
            if len(messages) == 3:
                open_calls.append(sidecar.active())
        elapsed.append((time.perf_counter() - started) * 1000)

    delta = sidecar.delta(stream, 1)
    assert messages == [b"item-%d" % i for i in range(6)]
    assert open_calls == [1]
    assert sidecar.active() == 0
    assert counts(delta) == {key("List", "0", "OK"): 1}
    assert_in_bucket(delta[key("List", "0", "OK")][2], 500, elapsed[0])
    # The gauge carries the request-side labels only: method, service and the pod's identity.
    active = sidecar.envoy.scrape().series(ACTIVE)
    assert all(set(a.labels) == set(IDENTITY) | {"rpc_method", "rpc_service"} for a in active), [a.labels for a in active]
    assert sidecar.envoy.scrape().value(ACTIVE, rpc_method=f"{INVENTORY}/List") == 0


def test_a_bidi_stream_is_one_call(sidecar):
    elapsed = []

    def outgoing():
        for i in range(4):
            yield b"m%d" % i
            time.sleep(0.1)

    replies = []

    def chat():
        started = time.perf_counter()
        replies.extend(sidecar.channel.stream_stream(f"/{INVENTORY}/Chat")(outgoing(), timeout=10))
        elapsed.append((time.perf_counter() - started) * 1000)

    delta = sidecar.delta(chat, 1)
    assert replies == [b"m0", b"m1", b"m2", b"m3"]
    assert counts(delta) == {key("Chat", "0", "OK"): 1}
    assert_in_bucket(delta[key("Chat", "0", "OK")][2], 400, elapsed[0])


def test_a_stream_reset_mid_response_is_the_upstreams_failure(sidecar):
    before = sidecar.reset.streams

    def call():
        received = []
        with pytest.raises(grpc.RpcError) as failed:
            for message in sidecar.channel.unary_stream(f"/{BROKEN}/Stream")(b"", timeout=10):
                received.append(message)
        assert received == [b"item"]
        assert failed.value.code() == grpc.StatusCode.INTERNAL, failed.value

    delta = sidecar.delta(call, 1)
    assert sidecar.reset.streams == before + 1
    # Envoy has no status for it and falls back to UNKNOWN (as Istio's grpc_response_status says
    # 2); the failure is the proxy's: the upstream reset the stream after the response started.
    assert counts(delta) == {key("Stream", "2", "UNKNOWN", "upstream_reset", service=BROKEN): 1}


def test_plain_http_next_to_grpc_has_no_grpc_labels(sidecar):
    """Envoy reports response.grpc_status 2 for a plain 200 too: metricpact never asks for it."""
    def call():
        assert sidecar.envoy.request("GET", "/plain")[0] == 200
        assert sidecar.envoy.request("POST", f"/plain/{INVENTORY}/Get", headers={"content-type": "application/grpc-web"})[0] == 200

    assert counts(sidecar.delta(call, 2)) == {("", "", "", "", ""): 2}


# ---------------------------------------------------------------- one gRPC pod, the Istio way

NAMESPACE = "shop"
WORKLOAD = "inventory"
POD = "inventory-5c9d8f7b6-k2m4p"
POD_IP = "10.244.0.21"
RATE = 20                # calls per second
LOAD_SECONDS = 26
WINDOW = "20s"
# Every 4th call fails UNAVAILABLE (a server error), every 4th is the caller's NOT_FOUND (not one).
PATTERN = [b"unavailable", b"not_found", b"ok", b"ok"]


def steady_grpc_load(port: int, seconds: float) -> tuple[float, list]:
    """Open loop: a call every 1/RATE s for `seconds`, whatever the answers. Returns the wall-clock
    start and every call's status code."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        get = channel.unary_unary(f"/{INVENTORY}/Get")
        start, wall = time.monotonic() + 0.2, time.time() + 0.2
        futures = []
        for n in range(int(seconds * RATE)):
            time.sleep(max(0.0, start + n / RATE - time.monotonic()))
            futures.append(get.future(PATTERN[n % len(PATTERN)], timeout=10))
        codes = []
        for f in futures:
            codes.append(f.code())
    return wall, codes


@pytest.fixture(scope="module")
def grpc_pod(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("grpc-mesh")
    contract = grpc_contract(workdir, rate_window=WINDOW, latency_window=WINDOW)
    prometheus_port = harness.free_port()
    rendered = render(contract, workdir / "render", "--namespace", NAMESPACE, "--selector", f"app={WORKLOAD}",
                      "--workload", WORKLOAD, "--wasm-file", str(harness.WASM),
                      "--prometheus-url", f"http://127.0.0.1:{prometheus_port}")
    pod = IstioPod(POD, NAMESPACE, {"app": WORKLOAD, "version": "v1", **rendered.pod_template_labels()},
                   annotations=rendered.pod_annotations(), ip=POD_IP, app_ports=[(8080, "grpc")])
    with contextlib.ExitStack() as stack:
        network = stack.enter_context(PodNetwork())
        app_port = start_grpc_app(stack, workdir, POD)
        sidecar = stack.enter_context(Sidecar(pod, rendered.docs("envoyfilter.yaml"), {8080: app_port}, workdir))
        cluster_pod = ClusterPod(pod, POD_IP)
        agent = stack.enter_context(IstioAgent(cluster_pod.agent_env, {15090: sidecar.stats_port}))
        network.attach(cluster_pod, sidecar, agent)
        _, jobs = istio_sample_pod_jobs()
        prometheus = stack.enter_context(ScrapePrometheus(
            workdir, jobs, [cluster_pod], network, rule_files=[rendered.directory / "recording-rules.yaml"],
            port=prometheus_port))
        prometheus.wait_up(1)
        wall, codes = steady_grpc_load(sidecar.port, LOAD_SECONDS)
        at = wall + LOAD_SECONDS - 1
        time.sleep(max(0.0, at + 3 - time.time()))
        assert sidecar.proc.poll() is None, sidecar.log_text()[-2000:]
        yield rendered, prometheus, at, codes


def test_the_grpc_load_was_served_as_designed(grpc_pod):
    _, _, _, codes = grpc_pod
    want = [{b"unavailable": grpc.StatusCode.UNAVAILABLE, b"not_found": grpc.StatusCode.NOT_FOUND,
             b"ok": grpc.StatusCode.OK}[PATTERN[n % len(PATTERN)]] for n in range(len(codes))]
    assert codes == want


def test_rendered_queries_give_the_grpc_pods_call_rate_and_error_ratio(grpc_pod):
    rendered, prometheus, at, _ = grpc_pod
    triggers = {t["name"]: t for t in rendered.one("keda-scaledobject.yaml")["spec"]["triggers"]}
    assert keda_metric(triggers["qps-per-pod"], at) == pytest.approx(RATE, rel=0.05)
    # The adapter's Pods metric for the HPA: the same per-pod rate.
    config = rendered.one("prometheus-adapter-rules.yaml")
    qps = rendered.one("hpa.yaml")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    values = PrometheusAdapter(prometheus, config["rules"]).pod_values(qps, NAMESPACE, [POD], at)
    assert values == {POD: pytest.approx(RATE, rel=0.05)}
    rules = {r["record"]: r for r in rendered.one("recording-rules.yaml")["groups"][0]["rules"]}
    rate_rule = f"namespace_pod:rpc_server_requests:rate{WINDOW}"
    ratio_rule = f"namespace_pod:rpc_server_requests:error_ratio_rate{WINDOW}"
    assert set(rules) == {rate_rule, ratio_rule, f"namespace_pod:{HISTOGRAM}:p95_{WINDOW}"}
    rate = {r["metric"]["pod"]: float(r["value"][1]) for r in prometheus.query(rate_rule, at)}
    assert rate == {POD: pytest.approx(RATE, rel=0.05)}
    # UNAVAILABLE is a server error; NOT_FOUND, the caller's, is not: a quarter of the calls.
    ratio = {r["metric"]["pod"]: float(r["value"][1]) for r in prometheus.query(ratio_rule, at)}
    assert ratio == {POD: pytest.approx(0.25, abs=0.01)}
    # The error series the ratio counts is the UNAVAILABLE one, named by OTel.
    errors = prometheus.query(f'sum by (error_type, rpc_response_status_code, rpc_method) ({COUNTER}{{error_type!=""}})', at)
    assert [r["metric"] for r in errors] == [
        {"error_type": "UNAVAILABLE", "rpc_response_status_code": "UNAVAILABLE", "rpc_method": f"{INVENTORY}/Get"}]
