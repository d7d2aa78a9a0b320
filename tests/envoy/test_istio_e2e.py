"""The Istio path end to end, without Kubernetes: the manifests `metricpact render` writes are
turned into the Envoy configuration an Istio sidecar gets once they are applied (the EnvoyFilter's
HTTP filter before the router, stats tags generated from the rendered `extraStatTags` exactly as
Istio's bootstrap template does, the rendered histogram buckets, Istio's node metadata). Three
"pods" -- two replicas of a Python `cart` Deployment and one Node `catalog` pod -- run behind such
sidecars; a real Prometheus scrapes them like the kubernetes-pods job. Under a known steady load,
the RENDERED KEDA queries and the RENDERED prometheus-adapter rules (series discovery, naming,
template expansion) must report the injected per-pod QPS and the latency bucket of a controlled
delay. Without the extraStatTags, the same queries find nothing."""

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
from istio import IstioPod, LoadTarget, Prometheus, PrometheusAdapter, Sidecar, apply_http_filter_patches, \
    istio_inbound_chain, pod_scrape_target, query_url, render, single_value, start_app, steady_load

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
# name: (workload, request rate per second, app command line)
PODS = {
    "cart-7d9f8b6c5-x2x8k": (CART, 30, [sys.executable, APPS / "python_app.py", "--delay-ms", str(DELAY_MS)]),
    "cart-7d9f8b6c5-q4w7n": (CART, 20, [sys.executable, APPS / "python_app.py", "--delay-ms", str(DELAY_MS)]),
    "catalog-6b7c9d8f4-q7k2p": (CATALOG, 15, [NODE, APPS / "node_app.js", "--delay-ms", str(DELAY_MS)]),
}
PATHS = {CART: lambda n: f"/cart/c-{n}", CATALOG: lambda n: f"/products/p-{n}"}


def pods_of(workload: str) -> list:
    return [name for name, (w, _, _) in PODS.items() if w == workload]


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


class Mesh:
    """Everything the steady-load test produced, for the query tests."""

    def __init__(self):
        self.rendered, self.sidecars, self.targets = {}, {}, {}
        self.prometheus: Prometheus | None = None
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
        for name, (workload, rate, argv) in PODS.items():
            # The pod as the rendered patch leaves it: its annotations and labels applied.
            pod = IstioPod(name, NAMESPACE, {"app": workload, "version": "v1", **m.rendered[workload].pod_template_labels()},
                           annotations=m.rendered[workload].pod_annotations())
            app_port = start_app(stack, argv, workdir, name)
            sidecar = stack.enter_context(Sidecar(pod, envoy_filters, app_port, workdir))
            status, _ = sidecar.request("GET", "/healthz", timeout=5)
            assert status == 200, f"GET /healthz through {name}'s sidecar: {status}"
            m.sidecars[name] = sidecar
            m.targets[name] = LoadTarget(name, sidecar.port, rate, PATHS[workload])
        m.prometheus = stack.enter_context(Prometheus(
            workdir, [pod_scrape_target(s) for s in m.sidecars.values()],
            rule_files=[m.rendered[CART].directory / "recording-rules.yaml"], port=prometheus_port))
        start, end = steady_load(list(m.targets.values()), LOAD_SECONDS)
        m.at = end - 1  # the query windows end inside the steady load
        time.sleep(max(0.0, m.at + 3 - time.time()))  # let the scrapes up to `at` land
        for sidecar in m.sidecars.values():
            assert sidecar.proc.poll() is None, f"{sidecar.pod.name}'s sidecar exited: {sidecar.log_text()[-2000:]}"
        yield m


# ---------------------------------------------------------------- the sidecar Istio would run

def test_each_pod_gets_exactly_its_workloads_filter_before_the_router(mesh):
    envoy_filters = [doc for r in mesh.rendered.values() for doc in r.docs("envoyfilter.yaml")]
    for name, sidecar in mesh.sidecars.items():
        chain = apply_http_filter_patches(envoy_filters, sidecar.pod, "SIDECAR_INBOUND", istio_inbound_chain())
        assert [f["name"] for f in chain] == ["envoy.filters.http.fault", "envoy.filters.http.cors", "metricpact",
                                              "envoy.filters.http.router"]
        workload = PODS[name][0]
        rendered_value = mesh.rendered[workload].one("envoyfilter.yaml")["spec"]["configPatches"][0]["patch"]["value"]
        assert chain[2] == rendered_value  # verbatim from the workload's own EnvoyFilter
        hcm = sidecar.config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        assert hcm["http_filters"] == chain
        stats_tags = sidecar.config["stats_config"]["stats_tags"]
        extra = mesh.rendered[workload].extra_stat_tags()
        for tag in extra:
            assert {"regex": f"({tag}=\\.=(.*?);\\.;)", "tag_name": tag} in stats_tags
        assert sidecar.config["node"]["id"] == f"sidecar~127.0.0.1~{name}.{NAMESPACE}~{NAMESPACE}.svc.cluster.local"
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
        workload, rate, _ = PODS[name]
        expo = sidecar.scrape_stats_port()
        common = {"http_request_method": "GET", "http_response_status_code": "200", "url_scheme": "http",
                  "network_protocol_version": "1.1", "k8s_pod_name": name, "k8s_namespace_name": NAMESPACE,
                  "service_name": workload}
        # The load, and the one readiness probe the fixture sent through the sidecar.
        assert sorted(((s.labels, s.value) for s in expo.series("http_server_requests_total")),
                      key=lambda lv: lv[0]["http_route"]) == [
            ({**common, "http_route": "/healthz"}, 1), ({**common, "http_route": "_OTHER"}, LOAD_SECONDS * rate)]
        # Prometheus stored them with the kubernetes-pods target labels next to ours.
        stored = mesh.prometheus.query(f'http_server_requests_total{{pod="{name}",http_route="_OTHER"}}', mesh.at)
        assert len(stored) == 1
        labels = stored[0]["metric"]
        assert labels["namespace"] == labels["k8s_namespace_name"] == NAMESPACE
        assert labels["pod"] == labels["k8s_pod_name"] == name
        assert labels["app"] == labels["service_name"] == workload


# ---------------------------------------------------------------- the rendered KEDA ScaledObject

def keda_triggers(mesh, workload: str) -> dict:
    return {t["name"]: t for t in mesh.rendered[workload].one("keda-scaledobject.yaml")["spec"]["triggers"]}


@pytest.mark.parametrize("workload", [CART, CATALOG])
def test_keda_qps_trigger_reports_the_injected_load_per_pod(mesh, workload):
    trigger = keda_triggers(mesh, workload)["qps-per-pod"]
    assert trigger["metricType"] == "AverageValue"
    meta = trigger["metadata"]
    total = single_value(query_url(meta["serverAddress"], meta["query"], mesh.at))
    pods = pods_of(workload)
    injected = sum(PODS[p][1] for p in pods)
    assert total == pytest.approx(injected, rel=MAX_QPS_ERROR), meta["query"]
    # AverageValue: KEDA's HPA divides by the replica count and compares with the threshold.
    average = total / len(pods)
    assert average == pytest.approx(injected / len(pods), rel=MAX_QPS_ERROR)
    assert average < float(meta["threshold"])  # 25 and 15 req/s per pod: below 100, no scale-out


@pytest.mark.parametrize("workload", [CART, CATALOG])
def test_keda_latency_trigger_finds_the_delay_in_its_bucket(mesh, workload):
    trigger = keda_triggers(mesh, workload)["p95-latency"]
    assert trigger["metricType"] == "Value"
    meta = trigger["metadata"]
    p95 = single_value(query_url(meta["serverAddress"], meta["query"], mesh.at))
    lower, upper = bucket_bounds(mesh.rendered[workload], DELAY_MS)
    assert (lower, upper) == (100, 250)
    assert lower < p95 <= upper, f"p95 {p95} for a fixed {DELAY_MS} ms delay: {meta['query']}"


# ---------------------------------------------------------------- the rendered prometheus-adapter rules + HPA

@pytest.mark.parametrize("workload", [CART, CATALOG])
def test_adapter_serves_the_hpa_metrics_per_pod(mesh, workload):
    rendered = mesh.rendered[workload]
    adapter = PrometheusAdapter(mesh.prometheus, rendered.one("prometheus-adapter-rules.yaml")["rules"])
    hpa = rendered.one("hpa.yaml")
    qps_metric, p95_metric = (m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"])
    assert {qps_metric, p95_metric} <= set(adapter.discover())
    pods = pods_of(workload)
    qps = adapter.pod_values(qps_metric, NAMESPACE, pods, mesh.at)
    assert set(qps) == set(pods)
    for pod in pods:
        assert qps[pod] == pytest.approx(PODS[pod][1], rel=MAX_QPS_ERROR), pod
    lower, upper = bucket_bounds(rendered, DELAY_MS)
    p95 = adapter.pod_values(p95_metric, NAMESPACE, pods, mesh.at)
    assert set(p95) == set(pods)
    for pod, value in p95.items():
        assert lower < value <= upper, (pod, value)
    # What the HPA compares with its AverageValue targets.
    targets = {m["pods"]["metric"]["name"]: float(m["pods"]["target"]["averageValue"]) for m in hpa["spec"]["metrics"]}
    assert sum(qps.values()) / len(pods) < targets[qps_metric]
    assert sum(p95.values()) / len(pods) <= targets[p95_metric]


def test_recording_rules_compute_per_pod_qps_and_p95(mesh):
    groups = mesh.rendered[CART].one("recording-rules.yaml")["groups"]
    qps_rule, p95_rule = (rule["record"] for rule in groups[0]["rules"])
    qps = {r["metric"]["pod"]: float(r["value"][1]) for r in mesh.prometheus.query(qps_rule, mesh.at)}
    assert set(qps) == set(PODS)
    for pod, (_, rate, _) in PODS.items():
        assert qps[pod] == pytest.approx(rate, rel=MAX_QPS_ERROR), pod
    p95 = {r["metric"]["pod"]: float(r["value"][1]) for r in mesh.prometheus.query(p95_rule, mesh.at)}
    lower, upper = bucket_bounds(mesh.rendered[CART], DELAY_MS)
    assert set(p95) == set(PODS) and all(lower < v <= upper for v in p95.values()), p95


# ---------------------------------------------------------------- without extraStatTags

def sanitize(name: str) -> str:
    """Envoy's Prometheus name sanitizing: every character outside [a-zA-Z0-9_:] becomes `_`."""
    return re.sub(r"[^a-zA-Z0-9_:]", "_", name)


def test_without_extra_stat_tags_metrics_are_flattened_and_the_rendered_queries_find_nothing(tmp_path, contract):
    prometheus_port = harness.free_port()
    rendered = render_for(contract, tmp_path / "render", CART, f"http://127.0.0.1:{prometheus_port}")
    annotations = dict(rendered.pod_annotations())
    del annotations["proxy.istio.io/config"]  # the pod patch was not applied: Istio's defaults only
    name = pods_of(CART)[0]
    pod = IstioPod(name, NAMESPACE, {"app": CART, "version": "v1", **rendered.pod_template_labels()},
                   annotations=annotations)
    with contextlib.ExitStack() as stack:
        app_port = start_app(stack, PODS[name][2], tmp_path, name)
        sidecar = stack.enter_context(Sidecar(pod, rendered.docs("envoyfilter.yaml"), app_port, tmp_path))
        stats_tags = {t["tag_name"] for t in sidecar.config["stats_config"]["stats_tags"]}
        assert not stats_tags & set(rendered.extra_stat_tags())
        prometheus = stack.enter_context(Prometheus(tmp_path, [pod_scrape_target(sidecar)], port=prometheus_port))
        target = LoadTarget(name, sidecar.port, 10, PATHS[CART])
        steady_load([target], 3)
        assert [status for _, status, _ in target.results] == [200] * 30

        # The sidecar exports every label combination as its own label-less metric name.
        expo = sidecar.scrape_stats_port()
        counter = "http_server_requests_total"
        assert not expo.series(counter)
        values = {"http_request_method": "GET", "http_route": "_OTHER", "http_response_status_code": "200",
                  "url_scheme": "http", "network_protocol_version": "1.1", "k8s_pod_name": name,
                  "k8s_namespace_name": NAMESPACE, "service_name": CART}
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
        for trigger in rendered.one("keda-scaledobject.yaml")["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert query_url(meta["serverAddress"], meta["query"], at) == [], trigger["name"]
        adapter = PrometheusAdapter(prometheus, rendered.one("prometheus-adapter-rules.yaml")["rules"])
        assert adapter.discover() == {}
        for rule in adapter.rules:
            series = rule["seriesQuery"].split("{")[0]
            assert prometheus.query(PrometheusAdapter.expand(rule, series, NAMESPACE, pods_of(CART)), at) == []
        for metric in rendered.one("hpa.yaml")["spec"]["metrics"]:
            assert adapter.pod_values(metric["pods"]["metric"]["name"], NAMESPACE, pods_of(CART), at) == {}


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
