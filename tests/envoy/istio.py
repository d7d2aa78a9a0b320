"""What an Istio sidecar and the autoscaling stack would do with `metricpact render`'s output,
reproduced with real processes (no Kubernetes can run here):

- `render()`: the real CLI's manifests, parsed;
- `IstioPod` / `sidecar_bootstrap()`: the Envoy bootstrap istio-agent would write for a pod after
  the rendered objects are applied -- the EnvoyFilter's HTTP filter patched into the inbound
  chain, `stats_config` generated from the pod's annotations exactly as Istio's bootstrap template
  does (`tools/packaging/common/envoy_bootstrap.json`, `pkg/bootstrap/config.go`), Istio's node
  metadata and node id;
- `Prometheus`: a real Prometheus whose job labels targets like the `kubernetes-pods` job;
- `PrometheusAdapter`: prometheus-adapter's series discovery, naming and `metricsQuery` template
  expansion for the rendered adapter rules;
- `steady_load()`: an open-loop load driver with known per-pod rates.

Every process started here is stopped again (context managers)."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

import harness

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")

HCM = "envoy.filters.network.http_connection_manager"
ROUTER = "envoy.filters.http.router"
ISTIO_VERSION = "1.30.0"
ROOT_NAMESPACE = "istio-system"  # Istio's config root namespace: objects there apply mesh-wide


# ---------------------------------------------------------------- rendering (the real CLI)

@dataclass
class Rendered:
    """One `metricpact render --out DIR` result: file name -> text, parsed on demand."""
    directory: Path
    texts: dict

    def docs(self, file: str) -> list:
        return load_yaml_documents(self.texts[file])

    def one(self, file: str) -> dict:
        docs = self.docs(file)
        assert len(docs) == 1, f"{file} holds {len(docs)} documents, expected 1"
        return docs[0]

    def pod_annotations(self) -> dict:
        return self.one("pod-annotations.yaml")["spec"]["template"]["metadata"]["annotations"]

    def pod_template_labels(self) -> dict:
        """Labels the pod patch adds (the mount marker, in local-file mode)."""
        return self.one("pod-annotations.yaml")["spec"]["template"]["metadata"].get("labels", {})

    def extra_stat_tags(self) -> list:
        return yaml.safe_load(self.pod_annotations()["proxy.istio.io/config"])["extraStatTags"]


def render(contract: Path | str, out: Path, *args: str) -> Rendered:
    out = Path(out)
    harness.run_cli("render", "--contract", str(contract), "--out", str(out), *args)
    return Rendered(out, {p.name: p.read_text() for p in sorted(out.iterdir()) if p.is_file()})


def load_yaml_documents(text: str) -> list:
    """The YAML documents of a file (empty ones, e.g. a comment-only head, are skipped)."""
    return [d for d in yaml.safe_load_all(text) if d is not None]


# ---------------------------------------------------------------- Istio's sidecar bootstrap

# Istio's fixed `stats_tags`, before and after the extraStatTags entries (envoy_bootstrap.json).
ISTIO_STATS_TAGS_BEFORE = [
    {"tag_name": "cluster_name", "regex": r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"},
    {"tag_name": "tcp_prefix", "regex": r"^tcp\.((.*?)\.)\w+?$"},
    {"regex": r"_rq(_(\d{3}))$", "tag_name": "response_code"},
    {"tag_name": "response_code_class", "regex": r"_rq(_(\dxx))$"},
    {"tag_name": "http_conn_manager_listener_prefix",
     "regex": r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"},
    {"tag_name": "http_conn_manager_prefix",
     "regex": r"^http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"},
    {"tag_name": "listener_address",
     "regex": r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"},
    {"tag_name": "mongo_prefix", "regex": r"^mongo\.(.+?)\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$"},
]
ISTIO_STATS_TAGS_AFTER = [
    {"regex": r"(cache\.(.+?)\.)", "tag_name": "cache"},
    {"regex": r"(component\.(.+?)\.)", "tag_name": "component"},
    {"regex": r"(tag\.(.+?);\.)", "tag_name": "tag"},
    {"regex": r"(wasm_filter\.(.+?)\.)", "tag_name": "wasm_filter"},
    {"tag_name": "authz_enforce_result", "regex": r"rbac(\.(allowed|denied))"},
    {"tag_name": "authz_dry_run_action", "regex": r"(\.istio_dry_run_(allow|deny)_)"},
    {"tag_name": "authz_dry_run_result", "regex": r"(\.shadow_(allowed|denied))"},
]
# pkg/bootstrap/config.go: required prefixes are always appended to the (default empty) user ones;
# rbac suffixes and the vhost route regex likewise. The template adds reporter=, component, istio.
REQUIRED_INCLUSION_PREFIXES = ["cluster_manager", "listener_manager", "server", "cluster.xds-grpc", "wasm"]
REQUIRED_INCLUSION_SUFFIXES = ["rbac.allowed", "rbac.denied", "shadow_allowed", "shadow_denied"]
REQUIRED_INCLUSION_REGEXPS = [r"vhost\..*\.route\..*"]


def extra_stat_tag_entry(tag: str) -> dict:
    """Exactly what the template renders for one extraStatTags item."""
    return {"regex": f"({tag}=\\.=(.*?);\\.;)", "tag_name": tag}


def proxy_extra_stat_tags(annotations: dict) -> list:
    """getStatsOptions(): the ProxyConfig's extraStatTags (here: from the proxy.istio.io/config
    annotation; no mesh-wide default is modelled), then the deprecated
    sidecar.istio.io/extraStatTags annotation; empty entries dropped, duplicates removed."""
    proxy_config = yaml.safe_load(annotations.get("proxy.istio.io/config", "") or "") or {}
    tags = list(proxy_config.get("extraStatTags") or [])
    tags += annotations.get("sidecar.istio.io/extraStatTags", "").split(",")
    out = []
    for tag in tags:
        if tag and tag not in out:
            out.append(tag)
    return out


def histogram_bucket_settings(annotations: dict) -> list:
    """sidecar.istio.io/statsHistogramBuckets -> histogram_bucket_settings, sorted by prefix."""
    raw = annotations.get("sidecar.istio.io/statsHistogramBuckets")
    if raw is None:
        return []
    buckets = json.loads(raw)
    return [{"match": {"prefix": prefix}, "buckets": buckets[prefix]} for prefix in sorted(buckets)]


def istio_stats_config(annotations: dict) -> dict:
    patterns = [{"prefix": "reporter="}]
    patterns += [{"prefix": p} for p in REQUIRED_INCLUSION_PREFIXES]
    patterns += [{"suffix": s} for s in REQUIRED_INCLUSION_SUFFIXES]
    patterns += [{"safe_regex": {"regex": r}} for r in REQUIRED_INCLUSION_REGEXPS]
    patterns += [{"prefix": "component"}, {"prefix": "istio"}]
    config = {
        "use_all_default_tags": False,
        "stats_tags": [*ISTIO_STATS_TAGS_BEFORE,
                       *[extra_stat_tag_entry(t) for t in proxy_extra_stat_tags(annotations)],
                       *ISTIO_STATS_TAGS_AFTER],
        "stats_matcher": {"inclusion_list": {"patterns": patterns}},
    }
    buckets = histogram_bucket_settings(annotations)
    if buckets:
        config["histogram_bucket_settings"] = buckets
    return config


DEPLOYMENT_POD = re.compile(r"^(?P<deployment>[a-z0-9-]+)-(?P<rs>[a-z0-9]+)-(?P<suffix>[a-z0-9]{5})$")


@dataclass
class IstioPod:
    """A Deployment's pod as the injector and istio-agent see it."""
    name: str                    # <deployment>-<replicaset hash>-<pod hash>
    namespace: str
    labels: dict                 # pod template labels (app, version, ...)
    annotations: dict = field(default_factory=dict)   # pod template annotations
    ip: str = "127.0.0.1"

    def __post_init__(self):
        m = DEPLOYMENT_POD.match(self.name)
        assert m, f"{self.name} is not a Deployment pod name (<name>-<rs hash>-<pod hash>)"
        self.deployment, self.pod_template_hash = m.group("deployment"), m.group("rs")

    @property
    def service_account(self) -> str:
        return self.deployment

    def pod_labels(self) -> dict:
        """Labels of the running pod: the template's, the ReplicaSet's pod-template-hash and
        the ones the injector adds."""
        return {**self.labels,
                "pod-template-hash": self.pod_template_hash,
                "security.istio.io/tlsMode": "istio",
                "service.istio.io/canonical-name": self.labels.get("app", self.deployment),
                "service.istio.io/canonical-revision": self.labels.get("version", "latest")}

    def node_id(self) -> str:
        return f"sidecar~{self.ip}~{self.name}.{self.namespace}~{self.namespace}.svc.cluster.local"

    def node_metadata(self) -> dict:
        labels = {k: v for k, v in self.pod_labels().items() if k != "pod-template-hash"}
        return {
            "NAME": self.name,
            "NAMESPACE": self.namespace,
            "LABELS": labels,
            "ANNOTATIONS": dict(self.annotations),
            "WORKLOAD_NAME": self.deployment,
            "OWNER": f"kubernetes://apis/apps/v1/namespaces/{self.namespace}/deployments/{self.deployment}",
            "CLUSTER_ID": "Kubernetes",
            "MESH_ID": "cluster.local",
            "ISTIO_VERSION": ISTIO_VERSION,
            "SERVICE_ACCOUNT": self.service_account,
            "INSTANCE_IPS": self.ip,
            "APP_CONTAINERS": self.deployment,
            "INTERCEPTION_MODE": "REDIRECT",
        }

    def service_cluster(self) -> str:
        return f"{self.labels['app']}.{self.namespace}" if "app" in self.labels else f"istio-proxy.{self.namespace}"


def selects(obj: dict, pod: IstioPod) -> bool:
    """Does an EnvoyFilter apply to the pod? Same namespace or the root namespace, and its
    workloadSelector (absent = every workload) matches the pod's labels."""
    namespace = obj["metadata"].get("namespace")
    if namespace not in (pod.namespace, ROOT_NAMESPACE):
        return False
    selector = obj["spec"].get("workloadSelector", {}).get("labels", {})
    labels = pod.pod_labels()
    return all(labels.get(k) == v for k, v in selector.items())


def apply_http_filter_patches(envoy_filters: list, pod: IstioPod, context: str, chain: list) -> list:
    """Applies the HTTP_FILTER patches of the EnvoyFilters selecting `pod` to an HCM filter
    chain, as istiod does for the given context. Values are inserted verbatim."""
    chain = list(chain)
    for obj in envoy_filters:
        assert obj["kind"] == "EnvoyFilter", obj["kind"]
        if not selects(obj, pod):
            continue
        for patch in obj["spec"]["configPatches"]:
            match = patch.get("match", {})
            if patch["applyTo"] != "HTTP_FILTER" or match.get("context", "ANY") not in (context, "ANY"):
                continue
            listener_filter = match.get("listener", {}).get("filterChain", {}).get("filter", {})
            if listener_filter.get("name") not in (None, HCM):
                continue
            names = [f["name"] for f in chain]
            anchor = listener_filter.get("subFilter", {}).get("name")
            operation = patch["patch"]["operation"]
            value = patch["patch"]["value"]
            if anchor is not None and anchor not in names:
                continue  # the patch's match fails: istiod applies nothing
            if operation == "INSERT_BEFORE":
                chain.insert(names.index(anchor) if anchor else 0, value)
            elif operation == "INSERT_AFTER":
                chain.insert(names.index(anchor) + 1 if anchor else len(chain), value)
            elif operation == "INSERT_FIRST":
                chain.insert(0, value)
            else:
                raise NotImplementedError(f"EnvoyFilter HTTP_FILTER operation {operation}")
    return chain


def istio_inbound_chain() -> list:
    """The inbound HCM filters of an Istio sidecar that exist in upstream Envoy (Istio's own
    istio.metadata_exchange / istio.stats are not in the PyPI Envoy); the router comes last."""
    return [
        {"name": "envoy.filters.http.fault",
         "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
        {"name": "envoy.filters.http.cors",
         "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
        {"name": ROUTER,
         "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
    ]


def _cluster(name: str, port: int) -> dict:
    return {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }


def _hcm_listener(name: str, port: int, stat_prefix: str, route_prefix: str, cluster: str, http_filters: list) -> dict:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": HCM,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": stat_prefix,
                "codec_type": "AUTO",
                "route_config": {"name": name, "virtual_hosts": [{
                    "name": name, "domains": ["*"],
                    "routes": [{"match": {"prefix": route_prefix}, "route": {"cluster": cluster, "timeout": "15s"}}],
                }]},
                "http_filters": http_filters,
            },
        }]}],
    }


def sidecar_bootstrap(pod: IstioPod, envoy_filters: list, app_port: int, *, inbound_port: int,
                      prometheus_port: int, admin_port: int) -> dict:
    """The sidecar's Envoy configuration after the rendered objects are applied. The inbound
    listener stands in for Istio's virtualInbound chain of the app's port; the stats listener
    for :15090 (`/stats/prometheus` routed to the admin), which Prometheus scrapes."""
    app_cluster = f"inbound|{app_port}||"
    inbound_filters = apply_http_filter_patches(envoy_filters, pod, "SIDECAR_INBOUND", istio_inbound_chain())
    config = {
        "node": {"id": pod.node_id(), "cluster": pod.service_cluster(), "metadata": pod.node_metadata()},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "stats_config": istio_stats_config(pod.annotations),
        "static_resources": {
            "listeners": [
                _hcm_listener("virtualInbound", inbound_port, f"inbound_0.0.0.0_{app_port}", "/", app_cluster,
                              inbound_filters),
                _hcm_listener("prometheus_stats", prometheus_port, "stats", "/stats/prometheus", "prometheus_stats",
                              [{"name": ROUTER, "typed_config": {
                                  "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]),
            ],
            "clusters": [_cluster(app_cluster, app_port), _cluster("prometheus_stats", admin_port)],
        },
    }
    # Istio leaves Envoy's 5 s stats flush unless sidecar.istio.io/statsFlushInterval is set.
    if "sidecar.istio.io/statsFlushInterval" in pod.annotations:
        config["stats_flush_interval"] = pod.annotations["sidecar.istio.io/statsFlushInterval"]
    return config


class Sidecar(harness.Envoy):
    """An Envoy started from `sidecar_bootstrap()`; `.port` is the inbound listener,
    `.stats_port` the :15090-like Prometheus endpoint."""

    def __init__(self, pod: IstioPod, envoy_filters: list, app_port: int, workdir: Path, concurrency=2, **kw):
        self.pod = pod
        self.stats_port = harness.free_port()
        config = sidecar_bootstrap(pod, envoy_filters, app_port, inbound_port=harness.free_port(),
                                   prometheus_port=self.stats_port, admin_port=harness.free_port(), **kw)
        super().__init__(config, workdir, concurrency=concurrency)

    def scrape_stats_port(self) -> harness.Exposition:
        status, body = harness.http_get(self.stats_port, "/stats/prometheus")
        assert status == 200, body[:300]
        return harness.Exposition.parse(body.decode())


# ---------------------------------------------------------------- child processes

class Process:
    """A child process with its output in a log file; `with` starts it and always stops it."""

    def __init__(self, name: str, argv: list, log_path: Path):
        self.name, self.argv, self.log_path = name, [str(a) for a in argv], Path(log_path)
        self.proc = None
        self.log = None

    def __enter__(self):
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()

    def check_running(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                               f"{self.log_path.read_text(errors='replace')[-2000:]}")


def start_app(stack: contextlib.ExitStack, argv: list, workdir: Path, name: str) -> int:
    """Starts an app from tests/apps with `--port N` appended; waits for /healthz."""
    port = harness.free_port()
    app = stack.enter_context(Process(name, [*argv, "--port", str(port)], workdir / f"{name}.log"))

    def healthy():
        app.check_running()
        try:
            return harness.http_get(port, "/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    harness.wait_until(healthy, timeout=15, what=f"{name} on port {port}")
    return port


# ---------------------------------------------------------------- Prometheus

@dataclass
class ScrapeTarget:
    address: str      # host:port
    labels: dict      # target labels, as kubernetes-pods' relabelling would set them


def pod_scrape_target(sidecar: Sidecar) -> ScrapeTarget:
    """What the kubernetes-pods job attaches to a pod's target: namespace, pod and the pod's
    labels (labelmap __meta_kubernetes_pod_label_(.+), names sanitized to [a-zA-Z0-9_])."""
    labels = {re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in sidecar.pod.pod_labels().items()}
    labels.update(namespace=sidecar.pod.namespace, pod=sidecar.pod.name)
    return ScrapeTarget(f"127.0.0.1:{sidecar.stats_port}", labels)


class Prometheus(Process):
    """A real Prometheus scraping `targets` every second (job kubernetes-pods, honor_labels like
    Istio's sample job), optionally evaluating rule files every second."""

    def __init__(self, workdir: Path, targets: list, rule_files=(), port: int | None = None):
        self.port = port or harness.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = targets
        workdir = Path(workdir)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{
                "job_name": "kubernetes-pods",
                "honor_labels": True,
                "metrics_path": "/stats/prometheus",
                "scrape_interval": "1s",
                "static_configs": [{"targets": [t.address], "labels": t.labels} for t in targets],
            }],
        }
        path = workdir / f"prometheus-{self.port}.yml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        super().__init__("prometheus", [
            PROMETHEUS, f"--config.file={path}", f"--storage.tsdb.path={workdir / f'tsdb-{self.port}'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"], workdir / f"prometheus-{self.port}.log")

    def __enter__(self):
        super().__enter__()
        try:
            harness.wait_until(self._ready, timeout=30, interval=0.2, what=f"prometheus on port {self.port}")
            harness.wait_until(self._targets_up, timeout=30, interval=0.25, what="every scrape target up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _ready(self):
        self.check_running()
        try:
            return harness.http_get(self.port, "/-/ready", timeout=2)[0] == 200
        except OSError:
            return False

    def _targets_up(self):
        up = {r["metric"].get("pod"): r["value"][1] for r in self.query('up{job="kubernetes-pods"}')}
        return len(up) == len(self.targets) and all(v == "1" for v in up.values())

    def api(self, path: str, params: list | dict) -> dict:
        status, body = harness.http_get(self.port, f"{path}?{urllib.parse.urlencode(params)}")
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise RuntimeError(f"{path} {params} failed ({status}): {body[:500]!r}")
        return answer["data"]

    def query(self, query: str, at: float | None = None) -> list:
        params = {"query": query}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api("/api/v1/query", params)["result"]

    def series(self, match: str) -> list:
        return self.api("/api/v1/series", [("match[]", match)])


def query_url(server_address: str, query: str, at: float) -> list:
    """An instant query against a Prometheus base URL, as KEDA's prometheus scaler sends it."""
    url = urllib.parse.urlsplit(server_address)
    assert url.scheme == "http" and url.hostname == "127.0.0.1", server_address
    path = (url.path.rstrip("/") or "") + "/api/v1/query"
    status, body = harness.http_get(url.port, f"{path}?{urllib.parse.urlencode({'query': query, 'time': f'{at:.3f}'})}")
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "success", body[:500]
    return answer["data"]["result"]


def single_value(result: list) -> float | None:
    """KEDA's reading of a query result: exactly one element, its value (None: no data)."""
    if not result:
        return None
    assert len(result) == 1, f"the query must return one element, got {len(result)}: {result}"
    return float(result[0]["value"][1])


# ---------------------------------------------------------------- prometheus-adapter

def go_template_replacement(replacement: str) -> str:
    """Go's regexp ReplaceAllString template (`$1`, `${1}`, `${name}`) as Python's."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: f"\\g<{m.group(1)}>", replacement)


def series_name(series_query: str) -> str:
    m = re.match(r"^[a-zA-Z_:][a-zA-Z0-9_:]*", series_query)
    assert m, f"no metric name at the start of seriesQuery {series_query!r}"
    return m.group(0)


class PrometheusAdapter:
    """prometheus-adapter's custom-metrics path for `rules:` (docs/config.md): discover series with
    each rule's seriesQuery, name them with name.matches/as, and answer a pods query by expanding
    metricsQuery (<<.Series>>, <<.LabelMatchers>>, <<.GroupBy>>)."""

    def __init__(self, prometheus: Prometheus, rules: list):
        self.prometheus, self.rules = prometheus, rules

    def discover(self) -> dict:
        """custom metric name -> (rule, series name), for every series Prometheus has."""
        metrics = {}
        for rule in self.rules:
            for labels in self.prometheus.series(rule["seriesQuery"]):
                series = labels["__name__"]
                name = rule.get("name", {})
                matches = re.compile(name.get("matches", "(.*)"))
                if not matches.search(series):
                    continue
                metrics[matches.sub(go_template_replacement(name.get("as", "$1")), series)] = (rule, series)
        return metrics

    @staticmethod
    def label_matchers(rule: dict, namespace: str, pods: list) -> str:
        overrides = rule["resources"]["overrides"]
        ns_label = next(k for k, v in overrides.items() if v["resource"] == "namespace")
        pod_label = next(k for k, v in overrides.items() if v["resource"] == "pod")
        # prometheus-adapter: LabelEq for the namespace, LabelMatches(label, strings.Join(names, "|"))
        # for the pods, each value quoted with Go's %q (JSON quoting, for these ASCII names).
        return f'{ns_label}={json.dumps(namespace)},{pod_label}=~{json.dumps("|".join(pods))}'

    @staticmethod
    def group_by(rule: dict) -> str:
        return next(k for k, v in rule["resources"]["overrides"].items() if v["resource"] == "pod")

    @classmethod
    def expand(cls, rule: dict, series: str, namespace: str, pods: list) -> str:
        query = rule["metricsQuery"]
        for placeholder, value in (("<<.Series>>", series),
                                   ("<<.LabelMatchers>>", cls.label_matchers(rule, namespace, pods)),
                                   ("<<.GroupBy>>", cls.group_by(rule))):
            query = query.replace(placeholder, value)
        assert "<<" not in query, f"unexpanded template in {query!r}"
        return query

    def pod_values(self, metric: str, namespace: str, pods: list, at: float) -> dict:
        """What GET custom.metrics.k8s.io/.../namespaces/NS/pods/*/METRIC answers: pod -> value."""
        discovered = self.discover()
        if metric not in discovered:
            return {}
        rule, series = discovered[metric]
        result = self.prometheus.query(self.expand(rule, series, namespace, pods), at)
        group = self.group_by(rule)
        return {r["metric"][group]: float(r["value"][1]) for r in result}


# ---------------------------------------------------------------- load

@dataclass
class LoadTarget:
    name: str
    port: int
    rate: float                          # requests per second
    path: Callable[[int], str]           # the n-th request's path
    results: list = field(default_factory=list)   # (completed at, status, latency ms)


def steady_load(targets: list, seconds: float, workers: int = 48) -> tuple[float, float]:
    """Open-loop load: target i gets a request every 1/rate s for `seconds`, whatever the
    response times. Returns (wall-clock start, wall-clock end of sending)."""
    stop = threading.Event()
    lock = threading.Lock()

    def send(target: LoadTarget, n: int):
        started = time.perf_counter()
        try:
            status, _ = harness.http_request(target.port, "GET", target.path(n), timeout=10)
        except OSError:
            status = 0
        with lock:
            target.results.append((time.time(), status, (time.perf_counter() - started) * 1000))

    def drive(target: LoadTarget, pool: ThreadPoolExecutor, start: float):
        for n in range(int(seconds * target.rate)):
            if stop.wait(max(0.0, start + n / target.rate - time.monotonic())):
                return
            pool.submit(send, target, n)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="load") as pool:
        start = time.monotonic() + 0.2
        wall_start = time.time() + 0.2
        drivers = [threading.Thread(target=drive, args=(t, pool, start), daemon=True) for t in targets]
        try:
            for d in drivers:
                d.start()
            for d in drivers:
                d.join()
        except BaseException:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return wall_start, wall_start + seconds
