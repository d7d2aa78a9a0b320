"""The layer between a pod and the autoscaler -- who scrapes what -- reproduced with a real
Prometheus and no Kubernetes:

- `sd_targets()`: the targets Kubernetes service discovery (role: pod) gives an injected pod,
  with exactly the `__meta_kubernetes_*` labels prometheus/prometheus discovery/kubernetes/pod.go
  attaches (one target per declared container port, one per container without ports);
- `ScrapePrometheus`: a real Prometheus running a setup's scrape jobs verbatim, each job's
  `kubernetes_sd_configs` swapped for `file_sd_configs` holding those targets (restricted to the
  job's `namespaces`, as the Kubernetes SD would be). Relabeling then computes the real scrape
  URLs and target labels. Every scrape goes through `PodNetwork`, an HTTP forward proxy
  (`proxy_url`) standing in for the cluster network: it maps `podIP:port` to the process
  listening for it -- the sidecar's :15090, istio-agent's :15020, and, for every other port, the
  sidecar's inbound listener (iptables redirects inbound traffic there, except 15090/15021/15020);
- `IstioAgent`: istio-agent's merged metrics endpoint on :15020 (pilot/cmd/pilot-agent/status/
  server.go `handleStats`, Istio 1.30.3);
- the two setups' scrape configurations: Istio's sample Prometheus (`fixtures/`, the
  `kubernetes-pods` job verbatim) and Prometheus Operator's (`pod_monitor_scrape_configs()`,
  generatePodMonitorConfig of prometheus-operator v0.93.0, checked against the operator's own
  golden file in `fixtures/`).

Every process started here is stopped again (context managers)."""

from __future__ import annotations

import http.client
import http.server
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import harness
from istio import AGENT_PORT, ENVOY_PROMETHEUS_PORT, IstioPod, Process

FIXTURES = Path(__file__).parent / "fixtures"
# Kubernetes SD's pod role: pod-level meta labels per target group, container-level per target.
META = "__meta_kubernetes_"


def sanitize_label_name(name: str) -> str:
    """strutil.SanitizeLabelName: every character outside [a-zA-Z0-9_] becomes `_`."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


# ---------------------------------------------------------------- Kubernetes service discovery

@dataclass
class ClusterPod:
    """An injected pod as the Kubernetes API shows it to Prometheus: the sidecar's pod model with
    the annotations the injector left (`IstioPod.injected_annotations()`) and a pod IP."""
    pod: IstioPod
    ip: str
    mesh_merge: bool = True

    @property
    def annotations(self) -> dict:
        return self.pod.injected_annotations(self.mesh_merge)[0]

    @property
    def agent_env(self) -> str | None:
        """ISTIO_PROMETHEUS_ANNOTATIONS of the istio-proxy container (None: not set)."""
        return self.pod.injected_annotations(self.mesh_merge)[1]

    def merged(self) -> bool:
        return self.annotations.get("prometheus.io/port") == str(AGENT_PORT)


def sd_targets(pod: ClusterPod) -> list:
    """file_sd target groups for one pod, labelled as discovery/kubernetes/pod.go `buildPod`
    labels them (pod phase Running, ready, no controller metadata beyond the ReplicaSet)."""
    p = pod.pod
    common = {
        f"{META}namespace": p.namespace,
        f"{META}pod_name": p.name,
        f"{META}pod_ip": pod.ip,
        f"{META}pod_ready": "true",
        f"{META}pod_phase": "Running",
        f"{META}pod_node_name": p.node,
        f"{META}pod_host_ip": "192.168.1.10",
        f"{META}pod_uid": f"uid-{p.name}",
        f"{META}pod_controller_kind": "ReplicaSet",
        f"{META}pod_controller_name": f"{p.deployment}-{p.pod_template_hash}",
    }
    for key, value in p.pod_labels().items():
        common[f"{META}pod_label_{sanitize_label_name(key)}"] = value
        common[f"{META}pod_labelpresent_{sanitize_label_name(key)}"] = "true"
    for key, value in pod.annotations.items():
        common[f"{META}pod_annotation_{sanitize_label_name(key)}"] = value
        common[f"{META}pod_annotationpresent_{sanitize_label_name(key)}"] = "true"
    groups = []
    for container in p.containers():
        base = {**common, f"{META}pod_container_name": container.name, f"{META}pod_container_image": container.image,
                f"{META}pod_container_id": f"containerd://{container.name}", f"{META}pod_container_init": str(container.init).lower()}
        if not container.ports:
            groups.append({"targets": [pod.ip], "labels": base})
        for number, name in container.ports:
            groups.append({"targets": [f"{pod.ip}:{number}"], "labels": {
                **base, f"{META}pod_container_port_name": name, f"{META}pod_container_port_number": str(number),
                f"{META}pod_container_port_protocol": "TCP"}})
    return groups


# ---------------------------------------------------------------- the cluster network

class PodNetwork(harness.LocalHTTPServer):
    """An HTTP forward proxy for Prometheus' scrapes: `GET http://POD_IP:PORT/path` goes to the
    local process registered for (POD_IP, PORT); nothing registered answers 502 (a refused
    connection, for Prometheus: the target is down). Every scrape is recorded."""

    def __init__(self):
        self.routes: dict = {}
        self.scrapes: list = []   # (pod ip, port, path with query)
        self.lock = threading.Lock()
        network = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                target = (url.hostname, url.port)
                path = url.path + (f"?{url.query}" if url.query else "")
                with network.lock:
                    network.scrapes.append((url.hostname, url.port, path))
                local = network.routes.get(target)
                if local is None:
                    return self.reply(502, {}, b"nothing listens on %s:%d\n" % (url.hostname.encode(), url.port))
                headers = {k: v for k, v in self.headers.items() if k.lower() in (
                    "accept", "accept-encoding", "user-agent", "x-prometheus-scrape-timeout-seconds")}
                headers["Host"] = url.netloc
                connection = http.client.HTTPConnection("127.0.0.1", local, timeout=10)
                try:
                    connection.request("GET", path, headers=headers)
                    response = connection.getresponse()
                    body = response.read()
                    keep = {k: v for k, v in response.getheaders() if k.lower() in ("content-type", "content-encoding")}
                    self.reply(response.status, keep, body)
                except OSError as e:
                    self.reply(502, {}, f"{e}\n".encode())
                finally:
                    connection.close()

            def reply(self, status, headers, body):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)

    def route(self, ip: str, port: int, local_port: int):
        self.routes[(ip, port)] = local_port

    def attach(self, pod: ClusterPod, sidecar, agent: "IstioAgent | None" = None):
        """The pod's reachable ports: 15090 (Envoy's static stats listener), 15020 (istio-agent),
        and every app container port through the sidecar's inbound listener."""
        self.route(pod.ip, ENVOY_PROMETHEUS_PORT, sidecar.stats_port)
        if agent is not None:
            self.route(pod.ip, AGENT_PORT, agent.port)
        for container_port, listener in sidecar.inbound_ports.items():
            self.route(pod.ip, container_port, listener)

    def scraped(self, ip: str) -> set:
        with self.lock:
            return {(port, path) for host, port, path in self.scrapes if host == ip}


class IstioAgent(harness.LocalHTTPServer):
    """istio-agent's :15020 `/stats/prometheus` (status/server.go `handleStats`, Istio 1.30.3):
    its own metrics (text), then Envoy's `localhost:15090/stats/prometheus` with the incoming
    query string, asked for text only (`allowedEnvoyTypes`), then -- when the injector set
    ISTIO_PROMETHEUS_ANNOTATIONS and its scrape is not "false" -- the app at
    `localhost:PORT PATH` (defaults /metrics and 80), over localhost, past Envoy; plain byte
    concatenation, Content-Type from the app's answer (`negotiateMetricsFormat`), failures of
    either fetch logged and left out, never an error. `local_ports`: the pod's localhost."""

    AGENT_METRICS = ("# HELP istio_agent_scrapes_total The total number of scrapes.\n"
                     "# TYPE istio_agent_scrapes_total counter\n")

    def __init__(self, env: str | None, local_ports: dict):
        self.scrapes = 0
        prometheus = None
        if env is not None:
            config = json.loads(env)
            if config.get("scrape") != "false":
                prometheus = {"path": config.get("path") or "/metrics", "port": config.get("port") or "80"}
        agent = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def fetch(self, port, path, accept):
                local = local_ports.get(int(port))
                if local is None:
                    return None, ""
                connection = http.client.HTTPConnection("127.0.0.1", local, timeout=10)
                try:
                    headers = {"Accept": accept}
                    if self.headers.get("User-Agent"):
                        headers["User-Agent"] = self.headers["User-Agent"]
                    connection.request("GET", path, headers=headers)
                    response = connection.getresponse()
                    body = response.read()
                    if response.status != 200:
                        return None, ""
                    return body, response.getheader("content-type", "")
                except OSError:
                    return None, ""
                finally:
                    connection.close()

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                if url.path not in ("/stats/prometheus", "/metrics"):
                    return self.reply(404, "text/plain", b"404 page not found\n")
                agent.scrapes += 1
                query = f"?{url.query}" if url.query else ""
                envoy, _ = self.fetch(ENVOY_PROMETHEUS_PORT, f"/stats/prometheus{query}", "text/plain;version=0.0.4;q=0.1")
                app, content_type = (None, "")
                if prometheus is not None:
                    app, content_type = self.fetch(prometheus["port"], prometheus["path"],
                                                   "text/plain;version=0.0.4;q=0.2,*/*;q=0.1")
                fmt = "text/plain; version=0.0.4; charset=utf-8"
                if content_type.startswith("application/openmetrics-text"):
                    fmt = content_type
                body = (IstioAgent.AGENT_METRICS + f"istio_agent_scrapes_total {agent.scrapes}\n").encode()
                self.reply(200, fmt, body + (envoy or b"") + (app or b""))

            def reply(self, status, content_type, body):
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)


# ---------------------------------------------------------------- the setups' scrape jobs

def istio_sample_pod_jobs() -> tuple[dict, list]:
    """(global, pod-role jobs) of Istio's sample Prometheus: `prometheus.yml` of the `prometheus`
    ConfigMap in samples/addons/prometheus.yaml (istio/istio 1.30.3), verbatim in fixtures/. Its
    other jobs discover nodes, endpoints and services, which carry no pod's metrics here."""
    config = yaml.safe_load((FIXTURES / "istio-1.30.3-sample-prometheus.yml").read_text())
    jobs = [j for j in config["scrape_configs"] if [sd.get("role") for sd in j.get("kubernetes_sd_configs", [])] == ["pod"]]
    assert [j["job_name"] for j in jobs] == ["kubernetes-pods", "kubernetes-pods-slow"]
    return config["global"], jobs


def istio_operator_monitors() -> list:
    """Istio's documented Prometheus Operator monitors (samples/addons/extras/prometheus-operator.yaml,
    istio/istio 1.30.3), verbatim in fixtures/: the PodMonitor envoy-stats-monitor and the
    ServiceMonitor istio-component-monitor (istiod; no pod of ours)."""
    return [d for d in yaml.safe_load_all((FIXTURES / "istio-1.30.3-prometheus-operator.yaml").read_text()) if d]


def _relabel(rule: dict) -> dict:
    """A user RelabelConfig as generateRelabelConfig emits it: keys in Prometheus' order, action
    lower-cased and defaulting to `replace` (the CRD's default, applied at admission)."""
    out = {}
    for key, name in (("sourceLabels", "source_labels"), ("separator", "separator"), ("targetLabel", "target_label"),
                      ("regex", "regex"), ("modulus", "modulus"), ("replacement", "replacement")):
        if key in rule:
            out[name] = rule[key]
    out["action"] = rule.get("action", "replace").lower()
    return out


def pod_monitor_scrape_configs(monitor: dict, shards: int = 1, shard: int | str = 0) -> list:
    """The scrape configs Prometheus Operator generates for a PodMonitor (pkg/prometheus/promcfg.go
    `generatePodMonitorConfig`, v0.93.0; a Prometheus without scrape classes, one shard, no
    enforced namespace label, selector mechanism Relabel). `$(SHARD)` is what the operator
    writes; its config-reloader substitutes the SHARD environment variable (0) before
    Prometheus reads it (`--config-envsubst-file`), so the config returned here has `shard`."""
    meta, spec = monitor["metadata"], monitor["spec"]
    ns, name = meta["namespace"], meta["name"]
    selector = spec.get("selector", {})
    namespaces = spec.get("namespaceSelector", {})
    jobs = []
    for i, ep in enumerate(spec["podMetricsEndpoints"]):
        sd = {"role": "pod"}
        if not namespaces.get("any"):
            sd["namespaces"] = {"names": namespaces.get("matchNames") or [ns]}
        job = {"job_name": f"podMonitor/{ns}/{name}/{i}", "honor_labels": bool(ep.get("honorLabels", False)),
               "kubernetes_sd_configs": [sd]}
        for key, name_ in (("interval", "scrape_interval"), ("scrapeTimeout", "scrape_timeout"), ("path", "metrics_path"),
                           ("params", "params"), ("scheme", "scheme")):
            if key in ep:
                job[name_] = ep[key]
        rules = [{"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}]
        if ep.get("filterRunning", True):
            rules.append({"action": "drop", "source_labels": [f"{META}pod_phase"], "regex": "(Failed|Succeeded)"})
        for key in sorted(selector.get("matchLabels", {})):
            k = sanitize_label_name(key)
            rules.append({"action": "keep", "source_labels": [f"{META}pod_label_{k}", f"{META}pod_labelpresent_{k}"],
                          "regex": f"({selector['matchLabels'][key]});true"})
        for exp in selector.get("matchExpressions", []):
            k = sanitize_label_name(exp["key"])
            both = [f"{META}pod_label_{k}", f"{META}pod_labelpresent_{k}"]
            rules.append({
                "In": {"action": "keep", "source_labels": both, "regex": f"({'|'.join(exp.get('values', []))});true"},
                "NotIn": {"action": "drop", "source_labels": both, "regex": f"({'|'.join(exp.get('values', []))});true"},
                "Exists": {"action": "keep", "source_labels": [f"{META}pod_labelpresent_{k}"], "regex": "true"},
                "DoesNotExist": {"action": "drop", "source_labels": [f"{META}pod_labelpresent_{k}"], "regex": "true"},
            }[exp["operator"]])
        target_port = ep.get("targetPort")
        if ep.get("port"):
            rules.append({"action": "keep", "source_labels": [f"{META}pod_container_port_name"], "regex": ep["port"]})
        elif ep.get("portNumber"):
            rules.append({"action": "keep", "source_labels": [f"{META}pod_container_port_number"], "regex": ep["portNumber"]})
        elif target_port is not None:
            by = "name" if isinstance(target_port, str) else "number"
            rules.append({"action": "keep", "source_labels": [f"{META}pod_container_port_{by}"], "regex": target_port})
        rules += [
            {"source_labels": [f"{META}namespace"], "target_label": "namespace"},
            {"source_labels": [f"{META}pod_container_name"], "target_label": "container"},
            {"source_labels": [f"{META}pod_name"], "target_label": "pod"},
        ]
        for label in spec.get("podTargetLabels", []):
            rules.append({"source_labels": [f"{META}pod_label_{sanitize_label_name(label)}"],
                          "target_label": sanitize_label_name(label), "regex": "(.+)", "replacement": "${1}"})
        rules.append({"target_label": "job", "replacement": f"{ns}/{name}"})
        if spec.get("jobLabel"):
            rules.append({"source_labels": [f"{META}pod_label_{sanitize_label_name(spec['jobLabel'])}"],
                          "target_label": "job", "regex": "(.+)", "replacement": "${1}"})
        if ep.get("port"):
            rules.append({"target_label": "endpoint", "replacement": ep["port"]})
        elif target_port is not None and str(target_port):
            rules.append({"target_label": "endpoint", "replacement": str(target_port)})
        rules += [_relabel(r) for r in ep.get("relabelings", [])]
        rules += [
            {"source_labels": ["__address__", "__tmp_hash"], "target_label": "__tmp_hash", "regex": "(.+);",
             "replacement": "$1", "action": "replace"},
            {"source_labels": ["__tmp_hash"], "target_label": "__tmp_hash", "modulus": shards, "action": "hashmod"},
            {"source_labels": ["__tmp_hash", "__tmp_disable_sharding"], "regex": "$(SHARD);|.+;.+", "action": "keep"},
        ]
        job["relabel_configs"] = rules
        if "scrapeNativeHistograms" in spec:  # addNativeHistogramConfig (Prometheus >= 3.8)
            job["scrape_native_histograms"] = spec["scrapeNativeHistograms"]
        if ep.get("metricRelabelings"):
            job["metric_relabel_configs"] = [_relabel(r) for r in ep["metricRelabelings"]]
        jobs.append(json.loads(json.dumps(job).replace("$(SHARD)", str(shard))))
    return jobs


# prometheus-operator v0.93.0's own expectations (pkg/prometheus/promcfg_test.go
# `TestPodMonitorPortNumber`: defaultPodMonitor() -- default/defaultPodMonitor, selector
# group=group1, interval 30s -- with these port, portNumber and targetPort), in fixtures/.
OPERATOR_GOLDEN_CASES = {
    "podMonitorObjectWithPodName": ("podname", 1024, "10240"),
    "podMonitorObjectWithPortNumber": ("", 1024, "10240"),
    "podMonitorObjectWithTargetPortInt": ("", 0, 10240),
    "podMonitorObjectWithTargetPortString": ("", 0, "10240"),
}


def pod_monitor_golden(case: str) -> tuple[dict, list]:
    """(the test's PodMonitor, the scrape_configs the operator generates for it)."""
    port, port_number, target_port = OPERATOR_GOLDEN_CASES[case]
    monitor = {"metadata": {"namespace": "default", "name": "defaultPodMonitor"},
               "spec": {"selector": {"matchLabels": {"group": "group1"}},
                        "podMetricsEndpoints": [{"interval": "30s", "port": port, "portNumber": port_number,
                                                 "targetPort": target_port}]}}
    golden = yaml.safe_load((FIXTURES / f"prometheus-operator-v0.93.0-{case}.golden").read_text())
    return monitor, golden["scrape_configs"]


# ---------------------------------------------------------------- Prometheus

def _namespaces(job: dict) -> list | None:
    sd, = job["kubernetes_sd_configs"]
    return (sd.get("namespaces") or {}).get("names")


class ScrapePrometheus(Process):
    """A real Prometheus running `jobs` (setup scrape configs) verbatim except for discovery:
    each job's `kubernetes_sd_configs` becomes a `file_sd_configs` of the pods' targets (those of
    its `namespaces`), and every scrape goes through the pod network (`proxy_url`). `interval`
    overrides the global scrape interval (and a monitor's own, where the test says so)."""

    def __init__(self, workdir: Path, jobs: list, pods: list, network: PodNetwork, *, interval="1s",
                 rule_files=(), port=None, extra_args=()):
        self.port = port or harness.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pods = pods
        workdir = Path(workdir)
        configs = []
        for n, job in enumerate(jobs):
            job = json.loads(json.dumps(job))
            namespaces = _namespaces(job)
            targets = [g for pod in pods if namespaces is None or pod.pod.namespace in namespaces for g in sd_targets(pod)]
            path = workdir / f"targets-{self.port}-{n}.json"
            path.write_text(json.dumps(targets, indent=1))
            del job["kubernetes_sd_configs"]
            job["file_sd_configs"] = [{"files": [str(path)], "refresh_interval": "1s"}]
            job["proxy_url"] = f"http://127.0.0.1:{network.port}"
            configs.append(job)
        config = {"global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
                  "rule_files": [str(p) for p in rule_files], "scrape_configs": configs}
        self.config_path = workdir / f"prometheus-{self.port}.yml"
        self.config_path.write_text(json.dumps(config, indent=1))
        super().__init__("prometheus", [
            harness.PROMETHEUS, f"--config.file={self.config_path}", f"--storage.tsdb.path={workdir / f'tsdb-{self.port}'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn", *extra_args],
            workdir / f"prometheus-{self.port}.log")

    def __enter__(self):
        super().__enter__()
        try:
            harness.wait_until(self._ready, timeout=30, interval=0.2, what=f"prometheus on port {self.port}")
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

    def api(self, path: str, params) -> dict:
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

    def active_targets(self) -> list:
        return self.api("/api/v1/targets", {"state": "active"})["activeTargets"]

    def wait_up(self, expected: int, timeout=30):
        """Waits until exactly `expected` targets are active and up."""
        def ready():
            self.check_running()
            targets = self.active_targets()
            return len(targets) == expected and all(t["health"] == "up" for t in targets)
        try:
            harness.wait_until(ready, timeout=timeout, interval=0.25, what=f"{expected} scrape targets up")
        except TimeoutError as e:
            have = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in self.active_targets()]
            raise TimeoutError(f"{e}; have {have}") from None
