"""What an Istio sidecar and the autoscaling stack would do with `metricpact render`'s output,
reproduced with real processes (no Kubernetes can run here):

- `render()`: the real CLI's manifests, parsed;
- `IstioPod` / `sidecar_bootstrap()`: the Envoy bootstrap istio-agent would write for a pod after
  the rendered objects are applied -- the HTTP filters in Istio's order with the EnvoyFilter's
  patch or the WasmPlugin/TrafficExtension where istiod puts it, `stats_config` generated from
  the pod's annotations exactly as Istio's bootstrap template does
  (`tools/packaging/common/envoy_bootstrap.json`, `pkg/bootstrap/config.go`), Istio's node
  metadata and node id; the injector's metrics-merge rewrite of the pod's annotations;
- `keda_metric()`: KEDA's prometheus scaler reading a rendered trigger;
- `PrometheusAdapter`: prometheus-adapter's series discovery, naming and `metricsQuery` template
  expansion for the rendered adapter rules (custom and external metrics);
- `steady_load()`: an open-loop load driver with known per-pod rates.

Every process started here is stopped again (context managers)."""

from __future__ import annotations

import contextlib
import json
import math
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

from harness import PROMETHEUS, PROMTOOL  # noqa: E402,F401  (re-exported)

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

# Kubernetes names a controller's pods `generateName + 5 random characters`, cutting the base at
# 58 characters (apiserver/pkg/storage/names/generate.go: maxNameLength 63, randomLength 5); a
# Deployment's ReplicaSet is `<deployment>-<pod-template-hash>` (controller/deployment/sync.go)
# and its pods' generateName `<replicaset>-` (controller_utils.go getPodsPrefix).
MAX_GENERATED_NAME_BASE = 58


def deployment_pod_name(deployment: str, pod_template_hash: str, suffix: str) -> str:
    assert len(suffix) == 5
    return f"{deployment}-{pod_template_hash}-"[:MAX_GENERATED_NAME_BASE] + suffix


@dataclass
class Container:
    name: str
    ports: list = field(default_factory=list)   # (containerPort, name or "")
    image: str = "app:1.0"
    init: bool = False


@dataclass
class IstioPod:
    """A Deployment's pod as the injector and istio-agent see it. `name` is the real pod name
    (`deployment_pod_name`), which for long Deployment names no longer shows the workload."""
    name: str
    namespace: str
    labels: dict                 # pod template labels (app, version, ...)
    annotations: dict = field(default_factory=dict)   # pod template annotations
    ip: str = "127.0.0.1"
    deployment: str | None = None
    pod_template_hash: str | None = None
    app_ports: list = field(default_factory=list)     # the app container's (containerPort, name)
    node: str = "worker-1"

    def __post_init__(self):
        if self.deployment is None:
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

    def injected_annotations(self, mesh_merge: bool = True) -> tuple[dict, str | None]:
        """The pod's annotations after injection and its ISTIO_PROMETHEUS_ANNOTATIONS env, as
        pkg/kube/inject/webhook.go `applyPrometheusMerge` writes them (Istio 1.30): unless
        `prometheus.io/scrape` parses false, and merging is on (pod annotation
        `prometheus.istio.io/merge-metrics`, else meshConfig, else true), the original scrape
        settings go to the env and the annotations point at the agent's :15020."""
        annotations = dict(self.annotations)
        sanitized = {re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in annotations.items()}
        scrape = {"true": True, "1": True, "false": False, "0": False}.get(sanitized.get("prometheus_io_scrape", "").lower(), True)
        merge_value = annotations.get("prometheus.istio.io/merge-metrics")
        merge = {"true": True, "false": False}.get((merge_value or "").lower(), mesh_merge)
        if not (scrape and merge) or sanitized.get("prometheus_io_port") == str(AGENT_PORT):
            return annotations, None
        original = {"scrape": sanitized.get("prometheus_io_scrape", ""), "path": sanitized.get("prometheus_io_path", ""),
                    "port": sanitized.get("prometheus_io_port", "")}
        env = json.dumps(original, separators=(",", ":")) if any(original.values()) else None
        for key in [k for k in annotations if re.sub(r"[^a-zA-Z0-9_]", "_", k) in
                    ("prometheus_io_port", "prometheus_io_path", "prometheus_io_scrape")]:
            del annotations[key]
        annotations.update({"prometheus.io/port": str(AGENT_PORT), "prometheus.io/path": "/stats/prometheus",
                            "prometheus.io/scrape": "true"})
        return annotations, env

    def containers(self) -> list:
        """The injected pod's containers (injection-template.yaml): the app's, istio-proxy
        declaring only 15090 `http-envoy-prom`, and the istio-init init container (no ports)."""
        return [Container(self.deployment, list(self.app_ports)),
                Container("istio-proxy", [(ENVOY_PROMETHEUS_PORT, "http-envoy-prom")], image="istio/proxyv2:1.30.3"),
                Container("istio-init", [], image="istio/proxyv2:1.30.3", init=True)]

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


# istio-agent's status port (merged metrics) and Envoy's Prometheus port (mesh defaults).
AGENT_PORT = 15020
ENVOY_PROMETHEUS_PORT = 15090


def selects(obj: dict, pod: IstioPod) -> bool:
    """Does an Istio object apply to the pod? Same namespace or the root namespace, and its
    selector (EnvoyFilter workloadSelector.labels, WasmPlugin/TrafficExtension
    selector.matchLabels; absent = every workload) matches the pod's labels."""
    namespace = obj["metadata"].get("namespace")
    if namespace not in (pod.namespace, ROOT_NAMESPACE):
        return False
    spec = obj["spec"]
    selector = spec.get("workloadSelector", {}).get("labels") or spec.get("selector", {}).get("matchLabels") or {}
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


def _typed(name: str, type_name: str, config: dict | None = None) -> dict:
    return {"name": name, "typed_config": {"@type": f"type.googleapis.com/{type_name}", **(config or {})}}


GRPC_STATS = "envoy.filters.http.grpc_stats"
RBAC = "envoy.filters.http.rbac"
FAULT = "envoy.filters.http.fault"
CORS = "envoy.filters.http.cors"


def istio_http_chain(context: str, rbac: dict | None = None) -> list:
    """A sidecar's HCM filters in the order istiod builds them (pilot/pkg/networking/core/
    listener_builder.go `buildHTTPConnectionManager`: mx, ext_authz, [AUTHN plugins], authn,
    [AUTHZ plugins], rbac, [STATS plugins], [unset plugins], grpc_stats, (alpn, outbound),
    fault, cors, istio.stats, router), keeping those upstream Envoy has (istio.metadata_exchange,
    istio_authn, istio.alpn and istio.stats are Istio's own). The RBAC filter exists only when
    an AuthorizationPolicy selects the workload (inbound): `rbac` is its config."""
    chain = []
    if rbac is not None and context == "SIDECAR_INBOUND":
        chain.append(_typed(RBAC, "envoy.extensions.filters.http.rbac.v3.RBAC", rbac))
    chain += [
        _typed(GRPC_STATS, "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
               {"emit_filter_state": True, "stats_for_all_methods": False}),
        _typed(FAULT, "envoy.extensions.filters.http.fault.v3.HTTPFault"),
        _typed(CORS, "envoy.extensions.filters.http.cors.v3.Cors"),
        _typed(ROUTER, "envoy.extensions.filters.http.router.v3.Router"),
    ]
    return chain


def istio_inbound_chain(rbac: dict | None = None) -> list:
    return istio_http_chain("SIDECAR_INBOUND", rbac)


def deny_path_prefix_policy(prefix: str) -> dict:
    """The RBAC filter config istiod generates for an AuthorizationPolicy with action DENY and a
    rule `to: [{operation: {paths: [PREFIX*]}}]` (pilot/pkg/security/authz/builder)."""
    return {"rules": {"action": "DENY", "policies": {"ns[default]-policy[deny]-rule[0]": {
        "permissions": [{"and_rules": {"rules": [{"or_rules": {"rules": [
            {"url_path": {"path": {"prefix": prefix}}}]}}]}}],
        "principals": [{"and_ids": {"ids": [{"any": True}]}}]}}},
        "shadow_rules_stat_prefix": "istio_dry_run_allow_"}


def wasm_plugin_filter(obj: dict) -> dict:
    """The HTTP filter istiod delivers for a WasmPlugin or TrafficExtension (over ECDS, after
    istio-agent turned a file:// or downloaded module into a local file), as
    pilot/pkg/model/extensions.go builds it: named extensions.istio.io/wasmplugin/NS.NAME, the
    plugin config as a StringValue of its JSON, root_id = pluginName, V8, no vm_id."""
    spec = obj["spec"]
    wasm = spec.get("wasm", spec)  # TrafficExtension nests the module fields under `wasm`
    url = wasm["url"]
    assert url.startswith("file://"), f"the model runs local modules only: {url}"
    name = f"{obj['metadata']['namespace']}.{obj['metadata']['name']}"
    policy = {"FAIL_OPEN": "FAIL_OPEN", "FAIL_CLOSE": "FAIL_CLOSED", "FAIL_RELOAD": "FAIL_RELOAD"}[wasm["failStrategy"]]
    return {"name": f"extensions.istio.io/wasmplugin/{name}", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": name, "root_id": wasm["pluginName"], "failure_policy": policy,
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                              "value": json.dumps(wasm["pluginConfig"])},
            "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": url[len("file://"):]}}},
        }}}


def apply_wasm_plugins(extensions: list, pod: IstioPod, context: str, chain: list) -> list:
    """Inserts the STATS-phase WasmPlugins / TrafficExtensions selecting `pod` where istiod puts
    them: after the authorization filters, right before grpc_stats."""
    mode = {"SIDECAR_INBOUND": "SERVER", "SIDECAR_OUTBOUND": "CLIENT"}[context]
    chain = list(chain)
    for obj in extensions:
        assert obj["kind"] in ("WasmPlugin", "TrafficExtension"), obj["kind"]
        if not selects(obj, pod):
            continue
        spec = obj["spec"]
        assert spec["phase"] == "STATS", spec["phase"]
        modes = {m.get("mode", "CLIENT_AND_SERVER") for m in spec.get("match") or [{}]}
        if not modes & {mode, "CLIENT_AND_SERVER"}:
            continue
        chain.insert([f["name"] for f in chain].index(GRPC_STATS), wasm_plugin_filter(obj))
    return chain


def sidecar_http_filters(pod: IstioPod, context: str, *, envoy_filters=(), extensions=(), rbac=None) -> list:
    """The HCM filters of one of the pod's sidecar listeners: Istio's chain, the WasmPlugins,
    then the EnvoyFilter patches (istiod applies those to the built chain)."""
    chain = apply_wasm_plugins(list(extensions), pod, context, istio_http_chain(context, rbac))
    return apply_http_filter_patches(list(envoy_filters), pod, context, chain)


def _cluster(name: str, port: int) -> dict:
    return {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }


def _hcm_listener(name: str, port: int, stat_prefix: str, routes: list, http_filters: list) -> dict:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": HCM,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": stat_prefix,
                "codec_type": "AUTO",
                "route_config": {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]},
                "http_filters": http_filters,
            },
        }]}],
    }


def port_protocol(name: str) -> str:
    """Istio's protocol of a named port (pkg/config/protocol/instance.go Parse, by the name's
    `<protocol>[-<suffix>]` prefix, case-insensitive); "" for an unnamed port (sniffed)."""
    prefix = name.split("-")[0].lower()
    if name.lower().startswith("grpc-web"):
        return "grpc-web"
    return prefix if prefix in ("grpc", "http", "http2", "https", "tcp", "tls", "mongo", "redis", "mysql") else ""


# Protocol.IsHTTP2() (grpc, grpc-web, http2): the inbound cluster speaks HTTP/2 to the app
# (pilot/pkg/networking/core/cluster_builder.go setUpstreamProtocol -> setH2Options).
HTTP2_PROTOCOLS = ("grpc", "grpc-web", "http2")
HTTP2_UPSTREAM = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


def _route(prefix: str, cluster: str, **extra) -> dict:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster, "timeout": "15s"}, **extra}


@dataclass
class Outbound:
    """An outbound listener of the sidecar (the app's calls to another service) with the route
    Istio renders from a VirtualService: `route_filters` holds its typed_per_filter_config
    (fault injection, CORS policy)."""
    upstream_port: int
    route_filters: dict = field(default_factory=dict)


def sidecar_bootstrap(pod: IstioPod, filters: dict, app_ports: dict, *, inbound_ports: dict,
                      prometheus_port: int, admin_port: int, outbound: Outbound | None = None,
                      outbound_port: int | None = None) -> dict:
    """The sidecar's Envoy configuration after the rendered objects are applied. One inbound
    listener per app port (`app_ports`: container port -> the app's real local port;
    `inbound_ports`: container port -> the listener's local port) stands in for Istio's
    virtualInbound filter chain of that port; the stats listener for :15090 (`/stats/prometheus`
    routed to the admin, envoy_bootstrap.json); `filters`: context -> HCM filters."""
    listeners, clusters = [], [_cluster("prometheus_stats", admin_port)]
    port_names = dict(pod.app_ports)
    for container_port, app_port in app_ports.items():
        cluster = f"inbound|{container_port}||"
        listeners.append(_hcm_listener(f"virtualInbound_{container_port}", inbound_ports[container_port],
                                       f"inbound_0.0.0.0_{container_port}", [_route("/", cluster)],
                                       filters["SIDECAR_INBOUND"]))
        clusters.append(_cluster(cluster, app_port))
        if port_protocol(port_names.get(container_port, "")) in HTTP2_PROTOCOLS:
            clusters[-1]["typed_extension_protocol_options"] = HTTP2_UPSTREAM
    listeners.append(_hcm_listener("prometheus_stats", prometheus_port, "stats",
                                   [_route("/stats/prometheus", "prometheus_stats")],
                                   [_typed(ROUTER, "envoy.extensions.filters.http.router.v3.Router")]))
    if outbound is not None:
        cluster = f"outbound|{outbound.upstream_port}||upstream.default.svc.cluster.local"
        route = _route("/", cluster)
        if outbound.route_filters:
            route["typed_per_filter_config"] = outbound.route_filters
        listeners.append(_hcm_listener("outbound_upstream", outbound_port, f"outbound_0.0.0.0_{outbound.upstream_port}",
                                       [route], filters["SIDECAR_OUTBOUND"]))
        clusters.append(_cluster(cluster, outbound.upstream_port))
    config = {
        "node": {"id": pod.node_id(), "cluster": pod.service_cluster(), "metadata": pod.node_metadata()},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "stats_config": istio_stats_config(pod.annotations),
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
    # Istio leaves Envoy's 5 s stats flush unless sidecar.istio.io/statsFlushInterval is set.
    if "sidecar.istio.io/statsFlushInterval" in pod.annotations:
        config["stats_flush_interval"] = pod.annotations["sidecar.istio.io/statsFlushInterval"]
    return config


class Sidecar(harness.Envoy):
    """An Envoy started from `sidecar_bootstrap()`: `.port` is the inbound listener of the first
    app port (`.inbound_ports` all of them), `.stats_port` the :15090-like Prometheus endpoint,
    `.outbound_port` the outbound listener (with `outbound`). The HTTP filters come from the
    rendered EnvoyFilters (`envoy_filters`) or WasmPlugins/TrafficExtensions (`extensions`)."""

    def __init__(self, pod: IstioPod, envoy_filters: list, app_port: int | dict, workdir: Path, concurrency=2, *,
                 extensions=(), rbac=None, outbound: Outbound | None = None):
        self.pod = pod
        app_ports = app_port if isinstance(app_port, dict) else {pod.app_ports[0][0] if pod.app_ports else 8080: app_port}
        self.stats_port = harness.free_port()
        self.inbound_ports = {p: harness.free_port() for p in app_ports}
        self.outbound_port = harness.free_port() if outbound else None
        self.filters = {context: sidecar_http_filters(pod, context, envoy_filters=envoy_filters, extensions=extensions,
                                                      rbac=rbac)
                        for context in ("SIDECAR_INBOUND", "SIDECAR_OUTBOUND")}
        config = sidecar_bootstrap(pod, self.filters, app_ports, inbound_ports=self.inbound_ports,
                                   prometheus_port=self.stats_port, admin_port=harness.free_port(),
                                   outbound=outbound, outbound_port=self.outbound_port)
        super().__init__(config, workdir, concurrency=concurrency)  # .port: the first listener's

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


def start_app(stack: contextlib.ExitStack, argv: list, workdir: Path, name: str, health: str = "/healthz") -> int:
    """Starts an app from tests/apps with `--port N` appended; waits for its health path."""
    port = harness.free_port()
    app = stack.enter_context(Process(name, [*argv, "--port", str(port)], workdir / f"{name}.log"))

    def healthy():
        app.check_running()
        try:
            return harness.http_get(port, health, timeout=2)[0] == 200
        except OSError:
            return False

    harness.wait_until(healthy, timeout=15, what=f"{name} on port {port}")
    return port


# ---------------------------------------------------------------- KEDA

def query_url(server_address: str, query: str, at: float) -> dict:
    """An instant query against a Prometheus base URL, as KEDA's prometheus scaler sends it
    (`/api/v1/query?query=…&time=…`): the answer's `data`."""
    url = urllib.parse.urlsplit(server_address)
    assert url.scheme == "http" and url.hostname == "127.0.0.1", server_address
    path = (url.path.rstrip("/") or "") + "/api/v1/query"
    status, body = harness.http_get(url.port, f"{path}?{urllib.parse.urlencode({'query': query, 'time': f'{at:.3f}'})}")
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "success", body[:500]
    return answer["data"]


class KedaScalerError(Exception):
    """What KEDA's prometheus scaler returns as an error (the ScaledObject's metric fails)."""


def keda_metric(trigger: dict, at: float) -> float:
    """The value KEDA's prometheus scaler reads for a trigger (pkg/scalers/prometheus_scaler.go,
    KEDA 2.18.3, `ExecutePromQuery`): a vector of exactly one element; an empty one is 0 only
    with ignoreNullValues (default true), else an error; +/-Inf likewise; NaN passes through
    (KEDA < 2.20 does not catch it: int64(NaN*1000) becomes MinInt64)."""
    meta = trigger["metadata"]
    ignore_null = meta.get("ignoreNullValues", "true").lower() in ("1", "t", "true")
    data = query_url(meta["serverAddress"], meta["query"], at)
    if data["resultType"] != "vector":
        raise KedaScalerError(f"json: cannot unmarshal {data['resultType']} into the scaler's vector result")
    result = data["result"]
    if not result:
        if ignore_null:
            return 0.0
        raise KedaScalerError("prometheus metrics 'prometheus' target may be lost, the result is empty")
    if len(result) > 1:
        raise KedaScalerError(f"prometheus query {meta['query']} returned multiple elements")
    value = float(result[0]["value"][1])
    if math.isinf(value):
        if ignore_null:
            return 0.0
        raise KedaScalerError(f"prometheus query returns {value}")
    return value


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

    @staticmethod
    def expand_external(rule: dict, series: str, namespace: str, selector: dict) -> str:
        """metricsQuery of an `externalRules` entry as BuildExternal (pkg/naming/metrics_query.go)
        expands it: LabelMatchers = the HPA's metric.selector requirements sorted by key
        (`label="value"`, Go %q), then the namespace label of a namespaced rule; GroupBy empty."""
        overrides = rule["resources"]["overrides"]
        ns_label = next(k for k, v in overrides.items() if v["resource"] == "namespace")
        matchers = [f"{k}={json.dumps(v)}" for k, v in sorted(selector.items())]
        if rule["resources"].get("namespaced", True):
            matchers.append(f"{ns_label}={json.dumps(namespace)}")
        query = rule["metricsQuery"]
        for placeholder, value in (("<<.Series>>", series), ("<<.LabelMatchers>>", ",".join(matchers)),
                                   ("<<.GroupBy>>", "")):
            query = query.replace(placeholder, value)
        assert "<<" not in query, f"unexpanded template in {query!r}"
        return query

    def external_value(self, metric: str, namespace: str, selector: dict, at: float) -> list:
        """GET external.metrics.k8s.io/v1beta1/namespaces/NS/METRIC?labelSelector=…: the values
        (an empty list: the HPA's "no metrics returned from external metrics API")."""
        for rule in self.rules:
            for labels in self.prometheus.series(rule["seriesQuery"]):
                series = labels["__name__"]
                name = rule.get("name", {})
                matches = re.compile(name.get("matches", "(.*)"))
                if matches.search(series) and matches.sub(go_template_replacement(name.get("as", "$1")), series) == metric:
                    return [float(r["value"][1]) for r in self.prometheus.query(
                        self.expand_external(rule, series, namespace, selector), at)]
        return []

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
