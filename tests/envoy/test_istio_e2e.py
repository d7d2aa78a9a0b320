"""The Istio path end to end, without Kubernetes: the manifests `metricpact render` writes are
turned into the Envoy configuration an Istio sidecar gets once they are applied (metricpact where
Istio puts a STATS-phase plugin, stats tags generated from the rendered `extraStatTags` exactly
as Istio's bootstrap template does, the rendered histogram buckets, Istio's node metadata). Three
"pods" -- two replicas of a Python `cart` Deployment and one Node `catalog` pod -- run behind such
sidecars, with istio-agent's merged :15020 endpoint, and a real Prometheus scrapes them with
Istio's sample `kubernetes-pods` job verbatim (tests/envoy/scrape.py). Under a known steady load,
the RENDERED KEDA triggers and the RENDERED prometheus-adapter rules (series discovery, naming,
template expansion) must report the injected per-pod QPS and the latency bucket of a controlled
delay. Without the extraStatTags, the same queries find nothing. Whichever delivery is applied
(EnvoyFilter, WasmPlugin, TrafficExtension), metricpact sits at one place and counts the same
requests, those the sidecar answers itself included."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

import harness
from istio import CORS, FAULT, GRPC_STATS, ROUTER, IstioPod, KedaScalerError, LoadTarget, Outbound, PrometheusAdapter, \
    Sidecar, apply_http_filter_patches, deny_path_prefix_policy, istio_inbound_chain, keda_metric, render, \
    sidecar_http_filters, start_app, steady_load
from scrape import ClusterPod, IstioAgent, PodNetwork, ScrapePrometheus, istio_sample_pod_jobs

ROOT = harness.ROOT
APPS = ROOT / "tests/apps"
NODE = shutil.which("node") or "/usr/bin/node"
NAMESPACE = "shop"
DELAY_MS = 120           # every app request takes this long: p95 lands in the bucket around it
LOAD_SECONDS = 26
WINDOW = "20s"           # rate windows of the test contract (the shipped one says 1m / 2m)
MAX_QPS_ERROR = 0.05

CART = "cart"
CATALOG = "catalog"
# name: (workload, request rate per second, app command line, pod IP)
PODS = {
    "cart-7d9f8b6c5-x2x8k": (CART, 30, [sys.executable, APPS / "python_app.py", "--delay-ms", str(DELAY_MS)], "10.244.0.11"),
    "cart-7d9f8b6c5-q4w7n": (CART, 20, [sys.executable, APPS / "python_app.py", "--delay-ms", str(DELAY_MS)], "10.244.0.12"),
    "catalog-6b7c9d8f4-q7k2p": (CATALOG, 15, [NODE, APPS / "node_app.js", "--delay-ms", str(DELAY_MS)], "10.244.0.13"),
}
PATHS = {CART: lambda n: f"/cart/c-{n}", CATALOG: lambda n: f"/products/p-{n}"}


def pods_of(workload: str) -> list:
    return [name for name, (w, _, _, _) in PODS.items() if w == workload]


@pytest.fixture(scope="module")
def contract(tmp_path_factory) -> Path:
    """contracts/http-server.yaml with 20 s rate windows, so a 26 s load fills them."""
    text = (ROOT / "contracts/http-server.yaml").read_text()
    for key, value in (("rate_window", "1m"), ("latency_window", "2m")):
        text, n = re.subn(rf"^(\s*{key}:\s*){value}\b", rf"\g<1>{WINDOW}", text, flags=re.M)
        assert n == 1, f"contracts/http-server.yaml no longer sets {key}: {value}"
    path = tmp_path_factory.mktemp("contract") / "http-server.yaml"
    path.write_text(text)
    return path


def render_for(contract: Path, out: Path, workload: str, prometheus_url: str, *extra: str):
    return render(contract, out, "--namespace", NAMESPACE, "--selector", f"app={workload}", "--workload", workload,
                  "--wasm-file", str(harness.WASM), "--prometheus-url", prometheus_url, *extra)


def bucket_bounds(rendered, value_ms: float) -> tuple[float, float]:
    """The rendered histogram bucket (lower, upper] that holds `value_ms`."""
    buckets = next(iter(json.loads(rendered.pod_annotations()["sidecar.istio.io/statsHistogramBuckets"]).values()))
    return max(b for b in buckets if b < value_ms), min(b for b in buckets if b >= value_ms)


def cluster_pod(name: str, rendered, annotations=None) -> ClusterPod:
    """The pod as the rendered patch leaves it (its annotations and labels applied), injected."""
    workload, _, _, ip = PODS[name]
    pod = IstioPod(name, NAMESPACE, {"app": workload, "version": "v1", **rendered.pod_template_labels()},
                   annotations=rendered.pod_annotations() if annotations is None else annotations, ip=ip,
                   app_ports=[(8080, "http")])
    return ClusterPod(pod, ip)


def start_pod(stack, pod: ClusterPod, envoy_filters: list, network: PodNetwork, workdir: Path) -> Sidecar:
    """The app, its sidecar and istio-agent, reachable on the pod network."""
    app_port = start_app(stack, PODS[pod.pod.name][2], workdir, pod.pod.name)
    sidecar = stack.enter_context(Sidecar(pod.pod, envoy_filters, {8080: app_port}, workdir))
    agent = stack.enter_context(IstioAgent(pod.agent_env, {15090: sidecar.stats_port, 8080: app_port}))
    network.attach(pod, sidecar, agent)
    return sidecar


class Mesh:
    """Everything the steady-load test produced, for the query tests."""

    def __init__(self):
        self.rendered, self.sidecars, self.targets, self.pods = {}, {}, {}, {}
        self.prometheus: ScrapePrometheus | None = None
        self.at = 0.0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, contract):
    workdir = tmp_path_factory.mktemp("mesh")
    m = Mesh()
    prometheus_port = harness.free_port()
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    for workload in (CART, CATALOG):
        m.rendered[workload] = render_for(contract, workdir / f"render-{workload}", workload, prometheus_url)
    envoy_filters = [doc for r in m.rendered.values() for doc in r.docs("envoyfilter.yaml")]
    with contextlib.ExitStack() as stack:
        network = stack.enter_context(PodNetwork())
        for name, (workload, rate, _, _) in PODS.items():
            pod = cluster_pod(name, m.rendered[workload])
            sidecar = start_pod(stack, pod, envoy_filters, network, workdir)
            status, _ = sidecar.request("GET", "/healthz", timeout=5)
            assert status == 200, f"GET /healthz through {name}'s sidecar: {status}"
            m.pods[name], m.sidecars[name] = pod, sidecar
            m.targets[name] = LoadTarget(name, sidecar.port, rate, PATHS[workload])
        _, jobs = istio_sample_pod_jobs()
        m.prometheus = stack.enter_context(ScrapePrometheus(
            workdir, jobs, list(m.pods.values()), network,
            rule_files=[m.rendered[CART].directory / "recording-rules.yaml"], port=prometheus_port))
        m.prometheus.wait_up(len(PODS))
        start, end = steady_load(list(m.targets.values()), LOAD_SECONDS)
        m.at = end - 1  # the query windows end inside the steady load
        time.sleep(max(0.0, m.at + 3 - time.time()))  # let the scrapes up to `at` land
        for sidecar in m.sidecars.values():
            assert sidecar.proc.poll() is None, f"{sidecar.pod.name}'s sidecar exited: {sidecar.log_text()[-2000:]}"
        yield m


# ---------------------------------------------------------------- the sidecar Istio would run

def test_each_pod_gets_exactly_its_workloads_filter_where_a_stats_plugin_goes(mesh):
    envoy_filters = [doc for r in mesh.rendered.values() for doc in r.docs("envoyfilter.yaml")]
    for name, sidecar in mesh.sidecars.items():
        chain = apply_http_filter_patches(envoy_filters, sidecar.pod, "SIDECAR_INBOUND", istio_inbound_chain())
        assert [f["name"] for f in chain] == ["metricpact", GRPC_STATS, FAULT, CORS, ROUTER]
        workload = PODS[name][0]
        rendered_value = mesh.rendered[workload].one("envoyfilter.yaml")["spec"]["configPatches"][0]["patch"]["value"]
        assert chain[0] == rendered_value  # verbatim from the workload's own EnvoyFilter
        hcm = sidecar.config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        assert hcm["http_filters"] == chain
        stats_tags = sidecar.config["stats_config"]["stats_tags"]
        extra = mesh.rendered[workload].extra_stat_tags()
        for tag in extra:
            assert {"regex": f"({tag}=\\.=(.*?);\\.;)", "tag_name": tag} in stats_tags
        assert sidecar.config["node"]["id"] == f"sidecar~{PODS[name][3]}~{name}.{NAMESPACE}~{NAMESPACE}.svc.cluster.local"
        assert "pod-template-hash" not in sidecar.config["node"]["metadata"]["LABELS"]


def test_the_load_was_served_as_injected(mesh):
    for name, target in mesh.targets.items():
        statuses = [status for _, status, _ in target.results]
        assert len(statuses) == int(LOAD_SECONDS * target.rate), name
        assert statuses.count(200) == len(statuses), f"{name}: {sorted(set(statuses))}"
        latencies = sorted(latency for _, _, latency in target.results)
        assert DELAY_MS <= latencies[len(latencies) // 2] < DELAY_MS + 80, f"{name}: median {latencies[len(latencies) // 2]}"


def test_every_series_is_labelled_with_the_pods_identity(mesh):
    for name, sidecar in mesh.sidecars.items():
        workload, rate, _, ip = PODS[name]
        expo = sidecar.scrape_stats_port()
        common = {"http_request_method": "GET", "http_response_status_code": "200", "url_scheme": "http",
                  "network_protocol_version": "1.1", "k8s_pod_name": name, "k8s_namespace_name": NAMESPACE,
                  "k8s_workload_name": workload, "service_name": workload}
        # The load, and the one readiness probe the fixture sent through the sidecar.
        assert sorted(((s.labels, s.value) for s in expo.series("http_server_requests_total")),
                      key=lambda lv: lv[0]["http_route"]) == [
            ({**common, "http_route": "/healthz"}, 1), ({**common, "http_route": "_OTHER"}, LOAD_SECONDS * rate)]
        # Prometheus stored them through istio-agent's :15020 with the kubernetes-pods target labels.
        stored = mesh.prometheus.query(f'http_server_requests_total{{pod="{name}",http_route="_OTHER"}}', mesh.at)
        assert len(stored) == 1
        labels = stored[0]["metric"]
        assert labels["namespace"] == labels["k8s_namespace_name"] == NAMESPACE
        assert labels["pod"] == labels["k8s_pod_name"] == name
        assert labels["app"] == labels["service_name"] == workload
        assert labels["job"] == "kubernetes-pods" and labels["instance"] == f"{ip}:15020"


# ---------------------------------------------------------------- the rendered KEDA ScaledObject

def keda_triggers(mesh, workload: str) -> dict:
    return {t["name"]: t for t in mesh.rendered[workload].one("keda-scaledobject.yaml")["spec"]["triggers"]}


@pytest.mark.parametrize("workload", [CART, CATALOG])
def test_keda_qps_trigger_reports_the_injected_load_per_pod(mesh, workload):
    trigger = keda_triggers(mesh, workload)["qps-per-pod"]
    assert trigger["metricType"] == "AverageValue"
    total = keda_metric(trigger, mesh.at)
    pods = pods_of(workload)
    injected = sum(PODS[p][1] for p in pods)
    assert total == pytest.approx(injected, rel=MAX_QPS_ERROR), trigger["metadata"]["query"]
    # AverageValue: KEDA's HPA divides by the replica count and compares with the threshold.
    average = total / len(pods)
    assert average == pytest.approx(injected / len(pods), rel=MAX_QPS_ERROR)
    assert average < float(trigger["metadata"]["threshold"])  # 25 and 15 req/s per pod: below 100, no scale-out


@pytest.mark.parametrize("workload", [CART, CATALOG])
def test_keda_latency_trigger_finds_the_delay_in_its_bucket(mesh, workload):
    trigger = keda_triggers(mesh, workload)["p95-latency"]
    assert trigger["metricType"] == "Value"
    p95 = keda_metric(trigger, mesh.at)
    lower, upper = bucket_bounds(mesh.rendered[workload], DELAY_MS)
    assert (lower, upper) == (100, 250)
    assert lower < p95 <= upper, f"p95 {p95} for a fixed {DELAY_MS} ms delay: {trigger['metadata']['query']}"


# ---------------------------------------------------------------- the rendered prometheus-adapter rules + HPA

@pytest.mark.parametrize("workload", [CART, CATALOG])
def test_adapter_serves_the_hpa_metrics(mesh, workload):
    rendered = mesh.rendered[workload]
    config = rendered.one("prometheus-adapter-rules.yaml")
    hpa = rendered.one("hpa.yaml")
    qps, p95 = hpa["spec"]["metrics"]
    assert qps["type"] == "Pods" and p95["type"] == "External"
    pods = pods_of(workload)
    adapter = PrometheusAdapter(mesh.prometheus, config["rules"])
    assert qps["pods"]["metric"]["name"] in adapter.discover()
    values = adapter.pod_values(qps["pods"]["metric"]["name"], NAMESPACE, pods, mesh.at)
    assert set(values) == set(pods)
    for pod in pods:
        assert values[pod] == pytest.approx(PODS[pod][1], rel=MAX_QPS_ERROR), pod
    # The workload-wide p95, one value, the same quantity KEDA's trigger reads.
    external = PrometheusAdapter(mesh.prometheus, config["externalRules"])
    metric = p95["external"]["metric"]
    latency = external.external_value(metric["name"], NAMESPACE, metric["selector"]["matchLabels"], mesh.at)
    assert latency == [pytest.approx(keda_metric(keda_triggers(mesh, workload)["p95-latency"], mesh.at))]
    lower, upper = bucket_bounds(rendered, DELAY_MS)
    assert lower < latency[0] <= upper
    # What the HPA compares with its targets: the average per-pod QPS, the workload's p95.
    assert sum(values.values()) / len(pods) < float(qps["pods"]["target"]["averageValue"])
    assert latency[0] <= float(p95["external"]["target"]["value"])


def test_recording_rules_compute_per_pod_qps_error_ratio_and_p95(mesh):
    groups = mesh.rendered[CART].one("recording-rules.yaml")["groups"]
    qps_rule, error_rule, p95_rule = (rule["record"] for rule in groups[0]["rules"])
    qps = {r["metric"]["pod"]: float(r["value"][1]) for r in mesh.prometheus.query(qps_rule, mesh.at)}
    assert set(qps) == set(PODS)
    for pod, (_, rate, _, _) in PODS.items():
        assert qps[pod] == pytest.approx(rate, rel=MAX_QPS_ERROR), pod
    # Every request succeeded: the error ratio is 0 for every pod, not missing.
    errors = {r["metric"]["pod"]: float(r["value"][1]) for r in mesh.prometheus.query(error_rule, mesh.at)}
    assert errors == {pod: 0.0 for pod in PODS}, error_rule
    p95 = {r["metric"]["pod"]: float(r["value"][1]) for r in mesh.prometheus.query(p95_rule, mesh.at)}
    lower, upper = bucket_bounds(mesh.rendered[CART], DELAY_MS)
    assert set(p95) == set(PODS) and all(lower < v <= upper for v in p95.values()), p95


# ---------------------------------------------------------------- one place for all three deliveries

DELIVERIES = {"envoyfilter": "envoyfilter.yaml", "wasmplugin": "wasmplugin.yaml", "trafficextension": "trafficextension.yaml"}
ORIGIN = "https://shop.example.com"


def test_every_delivery_puts_metricpact_at_one_place_and_counts_local_replies(tmp_path):
    """Istio's filter order (listener_builder.go) with an AuthorizationPolicy denying /admin on the
    pod (RBAC, inbound), and a VirtualService on the pod's outbound route to another service with a
    fault abort and a CORS policy (outbound). Each delivery lands metricpact right after RBAC and
    before grpc_stats, fault and CORS, so an aborted call and a CORS preflight are counted with
    every label, and an RBAC denial -- answered before metricpact ever sees the request headers --
    at the end of the stream (on_log), with its 403."""
    rendered = render(ROOT / "contracts/rest-api.yaml", tmp_path / "render", "--namespace", NAMESPACE,
                      "--selector", "app=orders-api", "--wasm-file", str(harness.WASM))
    pod = IstioPod("orders-api-7d9f8b6c5-x2x8k", NAMESPACE, {"app": "orders-api", "version": "v1",
                   **rendered.pod_template_labels()}, annotations=rendered.pod_annotations())
    rbac = deny_path_prefix_policy("/admin")
    route_filters = {
        # Istio's translation of a VirtualService `fault.abort` on /payments and of `corsPolicy`.
        FAULT: {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                "abort": {"http_status": 503, "percentage": {"numerator": 1000000, "denominator": "MILLION"}},
                "headers": [{"name": ":path", "string_match": {"prefix": "/payments"}}]},
        CORS: {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
               "allow_origin_string_match": [{"exact": ORIGIN}], "allow_methods": "GET,POST"},
    }
    chains = {}
    counts = {}
    # The render before this change anchored the EnvoyFilter at the router (after fault and CORS).
    before_the_router = rendered.docs("envoyfilter.yaml")
    for patch in before_the_router[0]["spec"]["configPatches"]:
        patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] = ROUTER
    with harness.Upstream() as upstream:
        for delivery, file in [*DELIVERIES.items(), ("before-the-router", None)]:
            docs = rendered.docs(file) if file else before_the_router
            kwargs = {"envoy_filters": docs} if docs[0]["kind"] == "EnvoyFilter" else {"envoy_filters": [], "extensions": docs}
            for context in ("SIDECAR_INBOUND", "SIDECAR_OUTBOUND"):
                names = [f["name"] for f in sidecar_http_filters(pod, context, rbac=rbac, **kwargs)]
                chains[(delivery, context)] = [n if n in (GRPC_STATS, FAULT, CORS, ROUTER, "envoy.filters.http.rbac")
                                               else "metricpact" for n in names]
            with Sidecar(pod, kwargs.pop("envoy_filters"), upstream.port, tmp_path, concurrency=1, rbac=rbac,
                         outbound=Outbound(upstream.port, route_filters), **kwargs) as sidecar:
                assert sidecar.request("GET", "/api/v1/orders")[0] == 200
                assert sidecar.request("GET", "/admin/users")[0] == 403                       # RBAC, inbound
                out = sidecar.outbound_port
                assert harness.http_request(out, "GET", "/payments/42")[0] == 503              # fault abort
                preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
                assert harness.http_request(out, "OPTIONS", "/inventory", headers=preflight)[0] == 200  # CORS
                assert harness.http_request(out, "GET", "/inventory")[0] == 200
                expo = sidecar.scrape()
                counts[delivery] = sorted(
                    (s.name, s.labels.get("http_request_method"), s.labels.get("http_response_status_code"),
                     s.labels.get("error_type", ""), s.value)
                    for s in expo.samples if s.name in ("http_server_requests_total", "http_client_requests_total"))
    assert chains[("envoyfilter", "SIDECAR_INBOUND")] == ["envoy.filters.http.rbac", "metricpact", GRPC_STATS, FAULT, CORS, ROUTER]
    assert chains[("envoyfilter", "SIDECAR_OUTBOUND")] == ["metricpact", GRPC_STATS, FAULT, CORS, ROUTER]
    for delivery in DELIVERIES:
        for context in ("SIDECAR_INBOUND", "SIDECAR_OUTBOUND"):
            assert chains[(delivery, context)] == chains[("envoyfilter", context)], (delivery, context)
    assert counts["envoyfilter"] == [
        ("http_client_requests_total", "GET", "200", "", 1),
        ("http_client_requests_total", "GET", "503", "503", 1),   # the fault-injected abort
        ("http_client_requests_total", "_OTHER", "200", "", 1),   # the CORS preflight (OPTIONS: not in the
                                                                  # contract's methods), answered by the sidecar
        ("http_server_requests_total", "GET", "200", "", 1),
        ("http_server_requests_total", "GET", "403", "", 1),      # the RBAC denial
    ]
    assert counts["wasmplugin"] == counts["trafficextension"] == counts["envoyfilter"]
    # Before the router metricpact comes after fault and CORS: it never sees those local replies'
    # request headers, and still counts them at the end of the stream (on_log) with the same
    # labels. The position changes the in-flight gauge and the timing source, not the counts.
    assert chains[("before-the-router", "SIDECAR_OUTBOUND")] == [GRPC_STATS, FAULT, CORS, "metricpact", ROUTER]
    assert counts["before-the-router"] == counts["envoyfilter"]


# ---------------------------------------------------------------- without extraStatTags

def sanitize(name: str) -> str:
    """Envoy's Prometheus name sanitizing: every character outside [a-zA-Z0-9_:] becomes `_`."""
    return re.sub(r"[^a-zA-Z0-9_:]", "_", name)


def test_without_extra_stat_tags_metrics_are_flattened_and_the_rendered_queries_fail_loudly(tmp_path, contract):
    prometheus_port = harness.free_port()
    rendered = render_for(contract, tmp_path / "render", CART, f"http://127.0.0.1:{prometheus_port}")
    annotations = dict(rendered.pod_annotations())
    del annotations["proxy.istio.io/config"]  # the pod patch was not applied: Istio's defaults only
    name = pods_of(CART)[0]
    pod = cluster_pod(name, rendered, annotations)
    with contextlib.ExitStack() as stack:
        network = stack.enter_context(PodNetwork())
        sidecar = start_pod(stack, pod, rendered.docs("envoyfilter.yaml"), network, tmp_path)
        stats_tags = {t["tag_name"] for t in sidecar.config["stats_config"]["stats_tags"]}
        assert not stats_tags & set(rendered.extra_stat_tags())
        _, jobs = istio_sample_pod_jobs()
        prometheus = stack.enter_context(ScrapePrometheus(tmp_path, jobs, [pod], network, port=prometheus_port))
        prometheus.wait_up(1)
        target = LoadTarget(name, sidecar.port, 10, PATHS[CART])
        steady_load([target], 3)
        assert [status for _, status, _ in target.results] == [200] * 30

        # The sidecar exports every label combination as its own label-less metric name.
        expo = sidecar.scrape_stats_port()
        counter = "http_server_requests_total"
        assert not expo.series(counter)
        values = {"http_request_method": "GET", "http_route": "_OTHER", "http_response_status_code": "200",
                  "url_scheme": "http", "network_protocol_version": "1.1", "k8s_pod_name": name,
                  "k8s_namespace_name": NAMESPACE, "k8s_workload_name": CART, "service_name": CART}
        flattened = sanitize(f"{counter}." + "".join(f"{k}=.={v};.;" for k, v in values.items()))
        assert expo.value(flattened) == 30
        assert expo.series(flattened)[0].labels == {}
        info = sanitize("metricpact_contract_info.metricpact_contract_name=.=http-server;.;")
        assert [s.name for s in expo.samples if s.name.startswith(info)], "contract info not flattened"
        assert not [s for s in expo.samples if s.name.startswith(("http_server", "metricpact")) and s.labels
                    and set(s.labels) != {"le"}]

        # Prometheus has the data -- under names no rendered query asks for.
        def stored():
            found = prometheus.query(f'{{__name__=~"{counter}_.+",namespace="{NAMESPACE}"}}')
            return found if any(float(r["value"][1]) == 30 for r in found) else None
        harness.wait_until(stored, timeout=15, interval=0.5, what="the flattened counter in Prometheus")
        at = time.time()
        # KEDA: an error (so its fallback applies), not a 0 that would scale the workload down.
        for trigger in rendered.one("keda-scaledobject.yaml")["spec"]["triggers"]:
            with pytest.raises(KedaScalerError, match="the result is empty"):
                keda_metric(trigger, at)
        config = rendered.one("prometheus-adapter-rules.yaml")
        adapter = PrometheusAdapter(prometheus, config["rules"] + config["externalRules"])
        assert adapter.discover() == {}
        for rule in config["rules"]:
            series = rule["seriesQuery"].split("{")[0]
            assert prometheus.query(PrometheusAdapter.expand(rule, series, NAMESPACE, pods_of(CART)), at) == []
        qps, p95 = rendered.one("hpa.yaml")["spec"]["metrics"]
        assert adapter.pod_values(qps["pods"]["metric"]["name"], NAMESPACE, pods_of(CART), at) == {}
        metric = p95["external"]["metric"]
        assert adapter.external_value(metric["name"], NAMESPACE, metric["selector"]["matchLabels"], at) == []


# ---------------------------------------------------------------- file mode needs the module in the pod

def test_a_sidecar_without_the_mounted_module_refuses_the_filter_even_with_fail_open(tmp_path):
    """File mode: the rendered filter reads /var/local/wasm/metricpact.wasm, which only pods with the
    userVolume annotations have. Elsewhere the missing file is a configuration error (Envoy
    rejects the listener; an LDS update would be NACKed), not a runtime failure FAIL_OPEN covers."""
    rendered = render(ROOT / "contracts/http-server.yaml", tmp_path / "render")
    envoy_filter = rendered.one("envoyfilter.yaml")
    path = envoy_filter["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]["vm_config"][
        "code"]["local"]["filename"]
    assert not Path(path).exists()
    # A pod without the patch (no volume) that a selector-less filter would still reach: the
    # renderer therefore selects only pods carrying the mount label in file mode.
    selector = envoy_filter["spec"]["workloadSelector"]["labels"]
    assert selector == {"metricpact.io/wasm": "mounted"}
    del envoy_filter["spec"]["workloadSelector"]
    pod = IstioPod("other-5f6d7c8b9-abcde", "default", {"app": "other"})  # no annotations, no volume
    with harness.Upstream() as upstream:
        sidecar = Sidecar(pod, [envoy_filter], upstream.port, tmp_path, concurrency=1)
        sidecar.expect_start = False
        with sidecar:
            sidecar.proc.wait(timeout=30)
    assert sidecar.proc.returncode != 0
    assert f"Invalid path: {path}" in sidecar.log_text()
