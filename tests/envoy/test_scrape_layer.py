"""The scrape layer for real: who scrapes what between a pod and the autoscaler, in the four
combinations a user meets -- {Istio's sample Prometheus (annotation-driven `kubernetes-pods` job),
Prometheus Operator with Istio's documented PodMonitor} x {metrics merging on (the default
contract), merging off (the flagship contract's exposition rewrite)}.

Each combination gets its own real Prometheus running that setup's scrape configuration verbatim
(tests/envoy/scrape.py: Istio's sample job from its fixture, the operator's generated config from
the rendered and Istio's PodMonitors), fed the pods as Kubernetes service discovery would list them
after injection and the rendered pod patch, scraping over a model of the pod network: a pod's
:15090 is its sidecar's stats listener, :15020 istio-agent's merged endpoint, every other port the
sidecar's inbound listener (and so the exposition rewrite). Two pods per workload under a known
steady load; the RENDERED KEDA triggers (read as KEDA's scaler reads them) and the RENDERED
prometheus-adapter rules must give each pod's injected QPS within 2 %, every traffic series must
be stored exactly once, and the app's own metrics must arrive as the contract says.

Negative controls: the render before this change (no sidecar scrape for a merging-off pod, no
istio-prometheus-ignore) stores no traffic series; missing metrics are a KEDA error, not 0; a
workload named with 50 characters, whose pod names Kubernetes cuts, is still selected."""

from __future__ import annotations

import contextlib
import copy
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import harness
from istio import IstioPod, KedaScalerError, LoadTarget, PrometheusAdapter, Sidecar, deployment_pod_name, keda_metric, \
    render, start_app, steady_load
from scrape import ClusterPod, IstioAgent, PodNetwork, ScrapePrometheus, istio_operator_monitors, istio_sample_pod_jobs, \
    pod_monitor_golden, pod_monitor_scrape_configs, OPERATOR_GOLDEN_CASES

ROOT = harness.ROOT
APPS = ROOT / "tests/apps"
WINDOW = "20s"           # the test contracts' rate windows (the shipped ones say 1m / 2m)
LOAD_SECONDS = 26
MAX_QPS_ERROR = 0.02
DELAY_MS = 120           # every app request takes this long: p95 lands in the (100, 250] ms bucket
# A 50-character Deployment name: its pods' generateName (`<name>-<hash>-`) is cut at 58 characters.
LONG_NAME = "payments-ledger-reconciliation-worker-euwest-prod1"
assert len(LONG_NAME) == 50


@dataclass
class Combination:
    """One Prometheus setup x one contract, with its workload's two pods."""
    name: str
    setup: str                  # "istio-sample" | "operator"
    contract: Path              # the shipped contract (windows shortened for the test)
    workload: str
    namespace: str
    rates: tuple                # requests per second of each pod
    subnet: int                 # pod IPs 10.244.<subnet>.x
    unmerged: bool = False      # the contract rewrites the app's exposition (merging off)
    native: bool = False        # the contract's duration histogram is native (merging off too)
    rendered: object = None
    pods: list = field(default_factory=list)       # ClusterPod
    sidecars: list = field(default_factory=list)
    targets: list = field(default_factory=list)    # LoadTarget
    prometheus: ScrapePrometheus | None = None


def combinations() -> list:
    http, rest = ROOT / "contracts/http-server.yaml", ROOT / "contracts/rest-api.yaml"
    return [
        Combination("sample-merged", "istio-sample", http, "cart", "shop", (24, 12), 1),
        Combination("sample-unmerged", "istio-sample", rest, "orders-api", "orders", (24, 12), 2, unmerged=True),
        Combination("operator-merged", "operator", http, LONG_NAME, "payments", (24, 12), 3),
        Combination("operator-unmerged", "operator", rest, "orders-api", "orders", (24, 12), 4, unmerged=True),
        Combination("sample-native", "istio-sample", http, "cart", "native", (24, 12), 5, native=True),
        Combination("operator-native", "operator", http, "cart", "native", (24, 12), 6, native=True),
    ]


def short_windows(contract: Path, directory: Path) -> str:
    text = contract.read_text()
    text, n = re.subn(r"^(\s*rate_window:\s*)1m\b", rf"\g<1>{WINDOW}", text, flags=re.M)
    if n == 0:  # rest-api.yaml sets no windows: add them to its autoscaling section
        text, n = re.subn(r"^autoscaling:\n", f"autoscaling:\n  rate_window: {WINDOW}\n  latency_window: {WINDOW}\n", text, flags=re.M)
    else:
        text, m = re.subn(r"^(\s*latency_window:\s*)2m\b", rf"\g<1>{WINDOW}", text, flags=re.M)
        assert m == 1
    assert n == 1, contract
    return text


def contract_for(c: "Combination", directory: Path) -> Path:
    text = short_windows(c.contract, directory)
    if c.native:
        text = text.replace("histogram: classic", "histogram: native")
    path = directory / c.contract.name
    path.write_text(text)
    return path


# The pods' pod-template hashes and name suffixes (Kubernetes' alphabets: rand.SafeEncodeString
# maps the hash's decimal digits to 4-9, b, c, d, f; suffixes use bcdfghjklmnpqrstvwxz2456789).
POD_SUFFIXES = ("x2x8k", "q4w7n")
TEMPLATE_HASH = "5d59d67564"


def pod_of(c: Combination, index: int) -> ClusterPod:
    r = c.rendered
    if c.unmerged:
        app_ports = [(8080, "http"), (8081, "http-management")]
        own = {}  # Spring apps are annotated by the pod patch (the metrics port is the contract's)
    else:
        app_ports = [(8080, "http")]
        own = {"prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"}
    labels = {"app": c.workload, "version": "v1", **r.pod_template_labels()}
    pod = IstioPod(deployment_pod_name(c.workload, TEMPLATE_HASH, POD_SUFFIXES[index]), c.namespace, labels,
                   annotations={**own, **r.pod_annotations()}, ip=f"10.244.{c.subnet}.{10 + index}",
                   deployment=c.workload, pod_template_hash=TEMPLATE_HASH, app_ports=app_ports)
    return ClusterPod(pod, pod.ip)


def for_prometheus_2_42(jobs: list) -> list:
    """Prometheus 2.42 (Debian's, the one here) predates `scrape_native_histograms` (3.8): it
    refuses the key, and its --enable-feature=native-histograms does the same (ScrapePrometheus)."""
    return [{k: v for k, v in job.items() if k != "scrape_native_histograms"} for job in jobs]


def jobs_for(c: Combination, rendered=None, monitor_interval="1s") -> list:
    """The setup's scrape configuration with the rendered wiring applied (`rendered`: another
    render, e.g. the one before this change)."""
    r = rendered or c.rendered
    if c.setup == "istio-sample":
        _, jobs = istio_sample_pod_jobs()
        if "prometheus-scrape-config.yaml" in r.texts:
            # The rendered jobs say 15s; the test's windows need 1 s scrapes (as for the monitors).
            jobs = jobs + [{**job, "scrape_interval": monitor_interval} if "scrape_interval" in job else job
                           for job in r.one("prometheus-scrape-config.yaml")["scrape_configs"]]
        return for_prometheus_2_42(jobs)
    monitors = [m for m in istio_operator_monitors() if m["kind"] == "PodMonitor"]
    if "podmonitor.yaml" in r.texts:
        monitors += r.docs("podmonitor.yaml")
    jobs = []
    for monitor in monitors:
        monitor = copy.deepcopy(monitor)
        for ep in monitor["spec"]["podMetricsEndpoints"]:
            if "interval" in ep:  # Istio's monitor says 15s; the test's windows need 1 s scrapes
                ep["interval"] = monitor_interval
        jobs += pod_monitor_scrape_configs(monitor)
    return for_prometheus_2_42(jobs)


class Cluster:
    def __init__(self):
        self.combinations = combinations()
        self.network: PodNetwork | None = None
        self.before_load = 0.0
        self.at = 0.0
        self.workdir: Path | None = None

    def get(self, name) -> Combination:
        return next(c for c in self.combinations if c.name == name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cluster")
    k = Cluster()
    k.workdir = workdir
    with contextlib.ExitStack() as stack:
        k.network = stack.enter_context(PodNetwork())
        for c in k.combinations:
            port = harness.free_port()
            directory = workdir / f"contract-{c.name}"
            directory.mkdir()
            contract = contract_for(c, directory)
            c.rendered = render(contract, workdir / f"render-{c.name}", "--namespace", c.namespace,
                                "--selector", f"app={c.workload}", "--workload", c.workload,
                                "--wasm-file", str(harness.WASM), "--prometheus-url", f"http://127.0.0.1:{port}")
            envoy_filters = c.rendered.docs("envoyfilter.yaml")
            for i, rate in enumerate(c.rates):
                pod = pod_of(c, i)
                name = pod.pod.name
                if c.unmerged:
                    metrics_port = harness.free_port()
                    app_port = start_app(stack, [sys.executable, APPS / "orders_app.py", "--metrics-port", str(metrics_port),
                                                 "--delay-ms", str(DELAY_MS)], workdir, name, health="/actuator/health")
                    app_ports = {8080: app_port, 8081: metrics_port}
                    path = lambda n: f"/api/v1/orders/{n:08x}-0000-4000-8000-000000000000"
                else:
                    app_port = start_app(stack, [sys.executable, APPS / "metrics_python.py", "--delay-ms", str(DELAY_MS)],
                                         workdir, name)
                    app_ports = {8080: app_port}
                    path = lambda n: "/work"
                sidecar = stack.enter_context(Sidecar(pod.pod, envoy_filters, app_ports, workdir))
                agent = None
                if pod.merged():
                    agent = stack.enter_context(IstioAgent(pod.agent_env, {15090: sidecar.stats_port, **app_ports}))
                k.network.attach(pod, sidecar, agent)
                c.pods.append(pod)
                c.sidecars.append(sidecar)
                c.targets.append(LoadTarget(name, sidecar.port, rate, path))
            c.prometheus = stack.enter_context(ScrapePrometheus(
                workdir, jobs_for(c), c.pods, k.network, port=port,
                extra_args=["--enable-feature=native-histograms"] if c.native else []))
        for c in k.combinations:
            c.prometheus.wait_up(4 if c.unmerged or c.native else 2)
        time.sleep(3)  # a few scrapes of the idle pods: their info series exist, no traffic yet
        k.before_load = time.time()
        start, end = steady_load([t for c in k.combinations for t in c.targets], LOAD_SECONDS)
        k.at = end - 1  # the query windows end inside the steady load
        time.sleep(max(0.0, k.at + 3 - time.time()))
        for c in k.combinations:
            for sidecar in c.sidecars:
                assert sidecar.proc.poll() is None, sidecar.log_text()[-2000:]
        yield k


SCRAPE_INTERVAL_S = 1.0


def by_name(c: Combination) -> dict:
    """Each pod's request rate as its sidecar sees it: the injected load, and, with merging off,
    Prometheus' scrape of the app's metrics port, which passes the sidecar like any request
    (one per scrape interval; 1 s here, so it is visible: 15 s in a cluster)."""
    return {p.pod.name: rate + (1 / SCRAPE_INTERVAL_S if scrapes_pass_the_sidecar(c) else 0) for p, rate in zip(c.pods, c.rates)}


def scrapes_pass_the_sidecar(c: Combination) -> bool:
    """With merging off, Prometheus scrapes the app's port through the sidecar."""
    return c.unmerged or c.native


COMBINATIONS = [c.name for c in combinations()]


# ---------------------------------------------------------------- the scrape configuration models

@pytest.mark.parametrize("case", sorted(OPERATOR_GOLDEN_CASES))
def test_the_operator_model_generates_what_the_operator_generates(case):
    monitor, golden = pod_monitor_golden(case)
    assert pod_monitor_scrape_configs(monitor, shard="$(SHARD)") == golden


# ---------------------------------------------------------------- who scrapes what

def test_the_load_was_served_as_injected(cluster):
    for c in cluster.combinations:
        for target in c.targets:
            statuses = [status for _, status, _ in target.results]
            assert len(statuses) == int(LOAD_SECONDS * target.rate), target.name
            assert set(statuses) == {200}, (target.name, sorted(set(statuses)))


NATIVE_PATH = "/stats/prometheus?histogram_buckets=prometheusnative&native_histogram_max_buckets=160"
EXPECTED_SCRAPES = {
    # merging on: the injector pointed prometheus.io/port at istio-agent, which merges Envoy's stats
    "sample-merged": {(15020, "/stats/prometheus")},
    # merging off: the app's port (through the sidecar, rewritten) and the sidecar's own stats
    "sample-unmerged": {(8081, "/actuator/prometheus"), (15090, "/stats/prometheus")},
    "operator-merged": {(15020, "/stats/prometheus")},
    "operator-unmerged": {(8081, "/actuator/prometheus"), (15090, "/stats/prometheus")},
    # native histograms: the sidecar's stats as protobuf (merging off), the app where its annotations say
    "sample-native": {(8080, "/metrics"), (15090, NATIVE_PATH)},
    "operator-native": {(8080, "/metrics"), (15090, NATIVE_PATH)},
}


@pytest.mark.parametrize("name", COMBINATIONS)
def test_each_pod_is_scraped_once_per_endpoint_and_never_twice_for_the_same_stats(cluster, name):
    c = cluster.get(name)
    targets = c.prometheus.active_targets()
    assert all(t["health"] == "up" for t in targets), [(t["scrapeUrl"], t.get("lastError")) for t in targets]
    urls = sorted(t["scrapeUrl"] for t in targets)
    assert urls == sorted(f"http://{p.ip}:{port}{path}" for p in c.pods for port, path in EXPECTED_SCRAPES[name])
    for p in c.pods:
        assert cluster.network.scraped(p.ip) == EXPECTED_SCRAPES[name]
        # Exactly the sidecar's own traffic series, once each: the same count Envoy exports.
        own = len(c.sidecars[c.pods.index(p)].scrape_stats_port().series("http_server_requests_total"))
        stored = c.prometheus.query(f'http_server_requests_total{{pod="{p.pod.name}"}}', cluster.at)
        assert len(stored) == own > 0, (p.pod.name, own, stored)
        dupes = c.prometheus.query(
            f'count by (pod, http_route, http_request_method, http_response_status_code) '
            f'(http_server_requests_total{{pod="{p.pod.name}"}}) > 1', cluster.at)
        assert dupes == []
        info = c.prometheus.query(f'metricpact_contract_info{{pod="{p.pod.name}"}}', cluster.at)
        assert len(info) == 1 and info[0]["metric"]["k8s_workload_name"] == c.workload


@pytest.mark.parametrize("name", COMBINATIONS)
def test_the_apps_own_metrics_arrive_as_the_contract_says(cluster, name):
    c = cluster.get(name)
    for p, target in zip(c.pods, c.targets):
        pod = p.pod.name
        if c.unmerged:
            # Rewritten by the sidecar: renamed, relabelled, the pod's identity injected, noise dropped.
            stored = c.prometheus.query(f'app_http_server_request_duration_seconds_count{{pod="{pod}",'
                                        f'http_route="/api/v1/orders/{{orderId}}"}}', cluster.at + 3)
            assert len(stored) == 1, stored
            labels = stored[0]["metric"]
            assert labels["k8s_pod_name"] == pod and labels["k8s_namespace_name"] == c.namespace
            assert labels["http_request_method"] == "GET" and labels["http_response_status_code"] == "200"
            assert "uri" not in labels and "outcome" not in labels
            assert float(stored[0]["value"][1]) == len(target.results)
            assert c.prometheus.query(f'{{__name__=~"jvm_.*|process_.*",pod="{pod}"}}', cluster.at) == []
        else:
            # Merged by istio-agent from the app over localhost (past Envoy), or with merging off
            # (native) scraped where its annotations say, through the sidecar: as the app wrote them.
            stored = c.prometheus.query(f'http_requests_total{{pod="{pod}",handler="/work"}}', cluster.at + 3)
            assert len(stored) == 1 and float(stored[0]["value"][1]) == len(target.results), stored


# ---------------------------------------------------------------- the rendered autoscalers

def triggers(c: Combination) -> dict:
    return {t["name"]: t for t in c.rendered.one("keda-scaledobject.yaml")["spec"]["triggers"]}


@pytest.mark.parametrize("name", COMBINATIONS)
def test_keda_reads_the_injected_qps_of_the_workload(cluster, name):
    c = cluster.get(name)
    trigger = triggers(c)["qps-per-pod"]
    assert trigger["metricType"] == "AverageValue" and trigger["metadata"]["ignoreNullValues"] == "false"
    total = keda_metric(trigger, cluster.at)
    print(f"\n{name}: KEDA qps-per-pod reads {total:.3f} req/s, injected {sum(by_name(c).values())}")
    assert total == pytest.approx(sum(by_name(c).values()), rel=MAX_QPS_ERROR), trigger["metadata"]["query"]
    # AverageValue: KEDA's HPA divides by the ready replicas and compares with the threshold.
    assert total / len(c.pods) < float(trigger["metadata"]["threshold"])


@pytest.mark.parametrize("name", COMBINATIONS)
def test_the_adapter_serves_each_pods_qps(cluster, name):
    c = cluster.get(name)
    adapter = PrometheusAdapter(c.prometheus, c.rendered.one("prometheus-adapter-rules.yaml")["rules"])
    metric = next(m["pods"]["metric"]["name"] for m in c.rendered.one("hpa.yaml")["spec"]["metrics"] if m["type"] == "Pods")
    values = adapter.pod_values(metric, c.namespace, list(by_name(c)), cluster.at)
    assert set(values) == set(by_name(c))
    print(f"\n{name}: adapter per-pod QPS {values}, injected {by_name(c)}")
    for pod, rate in by_name(c).items():
        assert values[pod] == pytest.approx(rate, rel=MAX_QPS_ERROR), pod


@pytest.mark.parametrize("name", COMBINATIONS)
def test_keda_and_the_hpa_read_one_workload_wide_p95(cluster, name):
    c = cluster.get(name)
    trigger = triggers(c)["p95-latency"]
    p95 = keda_metric(trigger, cluster.at)
    unit = 1000 if "microseconds" in trigger["metadata"]["query"] else 1
    assert 100 * unit < p95 <= 250 * unit, (p95, trigger["metadata"]["query"])
    config = c.rendered.one("prometheus-adapter-rules.yaml")
    adapter = PrometheusAdapter(c.prometheus, config["externalRules"])
    external = next(m["external"] for m in c.rendered.one("hpa.yaml")["spec"]["metrics"] if m["type"] == "External")
    values = adapter.external_value(external["metric"]["name"], c.namespace, external["metric"]["selector"]["matchLabels"],
                                    cluster.at)
    assert values == [pytest.approx(p95, rel=1e-9)]  # one value: HPA `Value` targets sum what comes back


@pytest.mark.parametrize("name", COMBINATIONS)
def test_no_traffic_reads_zero_and_no_data_is_an_error(cluster, name):
    c = cluster.get(name)
    t = triggers(c)
    if scrapes_pass_the_sidecar(c):
        # The scrapes of the app's port pass the sidecar: requests, though no load had come yet.
        assert 0 < keda_metric(t["qps-per-pod"], cluster.before_load) <= len(c.pods) / SCRAPE_INTERVAL_S
    else:
        # Before the load: the filter reported (its info series), no request had come: 0, not an
        # error -- for KEDA, and for the adapter, which finds its metrics from that series too.
        assert keda_metric(t["qps-per-pod"], cluster.before_load) == 0
        assert keda_metric(t["p95-latency"], cluster.before_load) == 0
        config = c.rendered.one("prometheus-adapter-rules.yaml")
        qps, p95 = c.rendered.one("hpa.yaml")["spec"]["metrics"]
        pods = list(by_name(c))
        assert PrometheusAdapter(c.prometheus, config["rules"]).pod_values(
            qps["pods"]["metric"]["name"], c.namespace, pods, cluster.before_load) == {pod: 0 for pod in pods}
        metric = p95["external"]["metric"]
        assert PrometheusAdapter(c.prometheus, config["externalRules"]).external_value(
            metric["name"], c.namespace, metric["selector"]["matchLabels"], cluster.before_load) == [0]
    # A workload whose metrics are missing altogether: an error, so KEDA falls back instead of
    # scaling down (with KEDA's default ignoreNullValues=true the same query would read 0).
    for trigger in t.values():
        missing = copy.deepcopy(trigger)
        missing["metadata"]["query"] = trigger["metadata"]["query"].replace(f'"{c.workload}"', '"no-such-workload"')
        assert missing["metadata"]["query"] != trigger["metadata"]["query"]
        with pytest.raises(KedaScalerError, match="the result is empty"):
            keda_metric(missing, cluster.at)
        del missing["metadata"]["ignoreNullValues"]
        assert keda_metric(missing, cluster.at) == 0


@pytest.mark.parametrize("name", ["sample-native", "operator-native"])
def test_native_histograms_arrive_with_the_sidecars_exact_count_and_sum(cluster, name):
    c = cluster.get(name)
    h = "http_server_request_duration_milliseconds"
    for p, sidecar, target in zip(c.pods, c.sidecars, c.targets):
        selector = f'{h}{{pod="{p.pod.name}",http_route="_OTHER"}}'
        stored = c.prometheus.query(selector)
        assert len(stored) == 1 and "histogram" in stored[0], stored   # a native histogram sample
        # Histograms reach the admin endpoint on Envoy's stats flush (5 s), then the next scrape.
        harness.wait_until(lambda: float(c.prometheus.query(f"histogram_count({selector})")[0]["value"][1]) == len(target.results),
                           timeout=20, interval=0.5, what=f"{p.pod.name}'s native histogram to hold the whole load")
        own = sidecar.scrape_stats_port()   # the same histogram as text, from the admin
        labels = {k: v for k, v in stored[0]["metric"].items() if k in own.series(f"{h}_count")[0].labels}
        assert own.value(f"{h}_count", **labels) == len(target.results)
        total = c.prometheus.query(f"histogram_sum({selector})")
        assert float(total[0]["value"][1]) == own.value(f"{h}_sum", **labels)
        assert c.prometheus.query(f'{h}_bucket{{pod="{p.pod.name}"}}', cluster.at) == []  # no classic series


# ---------------------------------------------------------------- negative controls

def test_a_50_character_workload_is_selected_although_a_pod_name_regex_finds_nothing(cluster):
    c = cluster.get("operator-merged")
    assert all(len(p.pod.name) == 63 and not p.pod.name.startswith(f"{LONG_NAME}-{TEMPLATE_HASH}-") for p in c.pods)
    counter = "http_server_requests_total"
    # What render wrote before selecting by the workload label (src/render/autoscaling.rs pod_regex).
    suffix = "[bcdfghjklmnpqrstvwxz2456789]"
    regex = f"{LONG_NAME}-{suffix}{{1,10}}-{suffix}{{5}}"
    assert c.prometheus.query(f'sum(rate({counter}{{namespace="{c.namespace}",pod=~"{regex}"}}[{WINDOW}]))', cluster.at) == []
    assert keda_metric(triggers(c)["qps-per-pod"], cluster.at) == pytest.approx(sum(by_name(c).values()), rel=MAX_QPS_ERROR)


def test_without_the_rendered_sidecar_scrape_an_unmerged_pod_has_no_traffic_series(cluster):
    """The render before this change: the pod patch set merging off and pointed prometheus.io at
    the app's port, with no sidecar scrape and no istio-prometheus-ignore label."""
    for name in ("sample-unmerged", "operator-unmerged"):
        c = cluster.get(name)
        pods = []
        for p in c.pods:
            old = copy.deepcopy(p)
            for label in ("metricpact.io/scrape-sidecar", "istio-prometheus-ignore"):
                del old.pod.labels[label]
            pods.append(old)
        old_render = copy.copy(c.rendered)
        old_render.texts = {k: v for k, v in c.rendered.texts.items() if k not in ("prometheus-scrape-config.yaml", "podmonitor.yaml")}
        with ScrapePrometheus(cluster.workdir, jobs_for(c, old_render), pods, cluster.network) as prometheus:
            harness.wait_until(lambda: len(prometheus.active_targets()) == 2 and all(
                t["lastScrape"] != "0001-01-01T00:00:00Z" for t in prometheus.active_targets()), timeout=20,
                what="the old wiring's scrapes")
            time.sleep(2)
            assert prometheus.query("http_server_requests_total") == []
            assert prometheus.query("metricpact_contract_info") == []
            health = sorted((t["scrapeUrl"], t["health"]) for t in prometheus.active_targets())
            if name == "sample-unmerged":
                # kubernetes-pods scrapes only the app's port: its rewritten metrics, nothing of Envoy.
                assert [h for _, h in health] == ["up", "up"]
                assert prometheus.query("app_orders_created_total")
            else:
                # Istio's monitor fetches APP_PORT/stats/prometheus: the app's 404, app metrics lost too.
                assert health == sorted((f"http://{p.ip}:8081/stats/prometheus", "down") for p in c.pods)
                assert prometheus.query("app_orders_created_total") == []
