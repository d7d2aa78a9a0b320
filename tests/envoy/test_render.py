"""`metricpact render`, checked as the cluster would check it: every Istio and KEDA object against
its CRD's openAPIV3Schema (with unknown fields refused, as `kubectl apply --validate=strict` does)
plus the CEL rules of the CRD implemented here, the HPA and the Deployment patch against the
Kubernetes OpenAPI schema (kubernetes-validate), the Prometheus rule file with promtool, every
PromQL expression with promtool, and the exact content derived from the contract. The checked-in
envoyfilter/ directory must be what the CLI renders today."""

from __future__ import annotations

import copy
import filecmp
import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

import harness
from istio import ISTIO_STATS_TAGS_AFTER, ISTIO_STATS_TAGS_BEFORE, PROMTOOL, PrometheusAdapter, Rendered, \
    go_template_replacement, load_yaml_documents, render, series_name

ROOT = harness.ROOT
CONTRACTS = sorted((ROOT / "contracts").glob("*.yaml"))
# CI lays shared/ beside the clone; METRICPACT_CRD_SCHEMAS overrides.
SCHEMAS = Path(os.environ.get("METRICPACT_CRD_SCHEMAS", ROOT.parent / "shared" / "schemas"))
KUBERNETES_VERSION = "1.33"

HCM = "envoy.filters.network.http_connection_manager"
ROUTER = "envoy.filters.http.router"
# Where the EnvoyFilter anchors metricpact: before grpc_stats, i.e. where WasmPlugin and
# TrafficExtension put a STATS-phase plugin (Istio's listener_builder.go).
ANCHOR = "envoy.filters.http.grpc_stats"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
SELF_LABELS = ["metricpact_contract_name", "metricpact_contract_version", "metricpact_contract_hash",
               "metricpact_label", "metricpact_metric", "metricpact_result", "metricpact_rule", "metricpact_severity"]
# Tag names Istio's bootstrap already extracts: an extraStatTags entry must not reuse them.
ISTIO_TAG_NAMES = {t["tag_name"] for t in ISTIO_STATS_TAGS_BEFORE + ISTIO_STATS_TAGS_AFTER}
EXAMPLE_SHA256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
REMOTE_URL = "https://example.com/metricpact.wasm"


# The drift check: the checked-in directories and the exact commands that produce them. The
# example module reference is the Makefile's (one source of truth for `make envoyfilter`).
def _makefile_variable(name: str) -> str:
    m = re.search(rf"^{name}\s*:?=\s*(\S+)\s*$", (ROOT / "Makefile").read_text(), re.M)
    assert m, f"Makefile defines no {name} (used by `make envoyfilter`)"
    return m.group(1)


DRIFT = {
    "envoyfilter": ["--contract", "contracts/http-server.yaml"],
    "envoyfilter/examples/orders-api": ["--contract", "contracts/rest-api.yaml",
                                        "--wasm-url", _makefile_variable("EXAMPLE_WASM_URL"),
                                        "--wasm-sha256", _makefile_variable("EXAMPLE_WASM_SHA256")],
}

MODES = {
    "default": [],
    "workload": ["--namespace", "shop", "--selector", "app=cart", "--workload", "cart"],
    "remote": ["--wasm-url", REMOTE_URL, "--wasm-sha256", EXAMPLE_SHA256],
}
BASE_FILES = {"envoyfilter.yaml", "wasmplugin.yaml", "trafficextension.yaml", "pod-annotations.yaml",
              "mesh-config.yaml", "istio-operator.yaml", "recording-rules.yaml", "prometheus-rule.yaml",
              "prometheus-adapter-rules.yaml"}
# With metrics merging off (exposition rewrite): who scrapes the sidecar's own stats.
SCRAPE_FILES = {"prometheus-scrape-config.yaml", "podmonitor.yaml"}
MONITOR_LABELS = {"release": "kube-prometheus-stack"}
AUTOSCALING_FILES = {"hpa.yaml", "keda-scaledobject.yaml"}


# ================================================================ the contract's side (expected values)

class Expected:
    """What a render of `contract` with `args` must contain, from the contract itself and from
    `metricpact compile` (the plugin configuration the filter runs)."""

    def __init__(self, contract: Path, args: list):
        self.contract = yaml.safe_load(contract.read_text())
        self.plugin_config_text = harness.run_cli("compile", str(contract)).stdout.strip()
        self.plugin_config = json.loads(self.plugin_config_text)
        self.args = args
        workload = self.contract.get("workload") or {}
        self.namespace = self.arg("--namespace") or workload.get("namespace") or "istio-system"
        selector = [a.split("=", 1) for a in self.args_of("--selector")]
        self.selector = dict(selector) if selector else dict(workload.get("selector") or {})
        if not self.args_of("--wasm-url"):
            # Local-file mode: only pods the patch mounted the module into are selected.
            self.selector["metricpact.io/wasm"] = "mounted"
        target = self.arg("--workload") or (workload.get("target") or {}).get("name")
        self.target = target
        self.target_kind = "Deployment" if self.arg("--workload") else (workload.get("target") or {}).get("kind", "Deployment")
        self.remote = self.arg("--wasm-url")
        self.sha256 = self.arg("--wasm-sha256")
        self.wasm_file = self.arg("--wasm-file") or "/var/local/wasm/metricpact.wasm"
        self.autoscaling = self.contract.get("autoscaling")
        self.client = bool((self.contract.get("client_metrics") or {}).get("enabled"))
        self.object_name = f"metricpact-{target}" if target else f"metricpact-{self.contract['name']}"

    def arg(self, name):
        values = self.args_of(name)
        return values[-1] if values else None

    def args_of(self, name):
        return [self.args[i + 1] for i, a in enumerate(self.args[:-1]) if a == name]

    @property
    def files(self) -> set:
        files = BASE_FILES | (AUTOSCALING_FILES if self.target and self.autoscaling else set())
        if self.contract.get("exposition"):
            files |= SCRAPE_FILES
        if self.exposition_port() and {k for k in self.selector if k != "metricpact.io/wasm"}:
            files |= {"peer-authentication.yaml"}
        return files

    def workload_label(self) -> str | None:
        """The label the autoscaling queries select the workload by: the one whose only source is
        Istio's WORKLOAD_NAME node metadata."""
        for label in self.plugin_config["labels"]:
            if label["sources"] == [{"kind": "node", "key": "WORKLOAD_NAME"}]:
                return label["name"]
        return None

    def workload_matchers(self) -> str:
        label = self.workload_label()
        if label:
            return f'namespace="{self.namespace}",{label}="{self.target}"'
        return f'namespace="{self.namespace}",pod=~"{self.pod_regex()}"'

    def exposition_port(self):
        """The app's metrics port, when the contract rewrites the app's exposition."""
        return (self.contract.get("exposition") or {}).get("port")

    def label_names(self) -> list:
        names = [label["name"] for label in self.contract.get("labels") or []]
        assert names == [label["name"] for label in self.plugin_config["labels"]], "compile reorders labels?"
        return names

    def extra_stat_tags(self) -> list:
        return self.label_names() + SELF_LABELS

    def sides(self) -> list:
        """(filter name, EnvoyFilter context, match mode, plugin configuration) per measured side."""
        sides = [("metricpact", "SIDECAR_INBOUND", "SERVER", self.plugin_config)]
        if self.client:
            sides.append(("metricpact-client", "SIDECAR_OUTBOUND", "CLIENT", self.client_plugin_config()))
        return sides

    def client_plugin_config(self) -> dict:
        """The server configuration with the client-side metric names (contract defaults)."""
        names = self.contract["client_metrics"]
        config = copy.deepcopy(self.plugin_config)
        unit = config["duration"]["unit"]
        defaults = {"requests": "http_client_requests_total", "duration": f"http_client_request_duration_{unit}",
                    "active_requests": "http_client_active_requests"}
        for key, default in defaults.items():
            if config.get(key):
                config[key]["name"] = names.get(key, default)
        config["client"] = True   # the client rules (every gRPC status but OK is an error)
        return config

    def duration_unit_per_ms(self) -> float:
        return {"milliseconds": 1, "microseconds": 1000}[self.plugin_config["duration"]["unit"]]

    def window(self, key: str, default: str) -> str:
        return (self.autoscaling or {}).get(key, default)

    def pod_regex(self) -> str:
        return (f"{self.target}-[0-9]+" if self.target_kind == "StatefulSet"
                else f"{self.target}-{SUFFIX}{{1,10}}-{SUFFIX}{{5}}")


# Kubernetes' alphabet for generated name suffixes.
SUFFIX = "[bcdfghjklmnpqrstvwxz2456789]"


def quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{round(value * 1000)}m"


def camel_behavior(behavior: dict | None) -> dict:
    """The contract's autoscaling.behavior in HPA terms; unset parts get Kubernetes' defaults
    (scaleUp: 0 s, Max of 100 %/15 s and 4 pods/15 s; selectPolicy Max)."""
    behavior = behavior or {}
    defaults = {"scale_up": (0, [{"type": "Percent", "value": 100, "periodSeconds": 15},
                                 {"type": "Pods", "value": 4, "periodSeconds": 15}]),
                "scale_down": (300, None)}
    out = {}
    for key, camel in (("scale_up", "scaleUp"), ("scale_down", "scaleDown")):
        rules = behavior.get(key) or {}
        window, policies = defaults[key]
        if "policies" in rules:
            policies = [{"type": p["type"], "value": p["value"], "periodSeconds": p["period_seconds"]}
                        for p in rules["policies"]]
        assert policies is not None, f"the test has no expectation for a contract without {key}.policies"
        out[camel] = {"stabilizationWindowSeconds": rules.get("stabilization_window_seconds", window),
                      "selectPolicy": rules.get("select_policy", "Max"),
                      "policies": policies}
    return out


# ================================================================ schemas

def _crd_index() -> dict:
    if not SCHEMAS.is_dir():
        pytest.fail(f"CRD schemas not found at {SCHEMAS} (set METRICPACT_CRD_SCHEMAS)")
    index = {}
    for path in sorted(SCHEMAS.rglob("*.yaml")):
        for doc in load_yaml_documents(path.read_text()):
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if version.get("served", True):
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    index[key] = (path, version["schema"]["openAPIV3Schema"])
    return index


CRDS = _crd_index()


def _object_meta_validator() -> jsonschema.Validator:
    """Kubernetes' own ObjectMeta schema (strict), as bundled offline by kubernetes-validate."""
    import importlib.resources
    from referencing import Registry, Resource
    version = [v for v in kubernetes_validate.utils.all_versions() if v.startswith(KUBERNETES_VERSION)][-1]
    directory = importlib.resources.files("kubernetes_validate") / f"kubernetes-json-schema/v{version}-local-strict"
    schema = json.loads((directory / "objectmeta-meta-v1.json").read_text())
    definitions = Resource.from_contents(json.loads((directory / "_definitions.json").read_text()))
    registry = definitions @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


OBJECT_META = _object_meta_validator()


def strict_structural(schema, root=True):
    """A CRD schema as the API server applies it with field validation Strict: unknown fields are
    errors (except under x-kubernetes-preserve-unknown-fields), `nullable` is honoured, and the
    root accepts apiVersion/kind/metadata (metadata is checked against ObjectMeta separately)."""
    if isinstance(schema, list):
        return [strict_structural(s, False) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "x-kubernetes-validations":
            continue  # evaluated by cel_errors()
        if key == "properties":
            out[key] = {name: strict_structural(sub, False) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "oneOf", "anyOf", "allOf"):
            out[key] = strict_structural(value, False)
        else:
            out[key] = value
    if root:
        out.setdefault("properties", {})
        out["properties"].update(apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"})
        out.setdefault("required", [])
        out["required"] = sorted(set(out["required"]) | {"apiVersion", "kind", "metadata"})
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("int32")
def _int32(value):
    return not isinstance(value, int) or -2 ** 31 <= value < 2 ** 31


@FORMATS.checks("int64")
def _int64(value):
    return not isinstance(value, int) or -2 ** 63 <= value < 2 ** 63


# ---------------------------------------------------------------- the CRDs' CEL rules, by hand
# jsonschema ignores x-kubernetes-validations. Every rule on a node our objects reach must be
# implemented here: an unknown rule is an error, so a CRD update cannot silently skip one.

def go_parse_request_uri(s: str):
    """(ok, scheme) of Go's url.ParseRequestURI, which CEL's isURL()/url() use (approximation
    sufficient for URLs: scheme syntax, absolute-path rule, authority characters)."""
    if not s or any(ord(c) < 0x20 or ord(c) == 0x7f for c in s):
        return False, None
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*):(.*)$", s, re.S)
    if s.startswith(":"):
        return False, None
    scheme, rest = (m.group(1).lower(), m.group(2)) if m else ("", s)
    if not scheme and not rest.startswith("/"):
        return False, None
    if rest.startswith("//"):
        authority = rest[2:].split("/", 1)[0]
        host = authority.rsplit("@", 1)[-1]
        if not re.fullmatch(r"[A-Za-z0-9.\-_~!$&'()*+,;=%\[\]:]*", host):
            return False, None
        if re.search(r":[^\]:]*$", host) and not re.search(r":[0-9]*$", host):
            return False, None  # a port must be digits
    return True, scheme


def _url_rule(rule: str):
    schemes = set(json.loads("[" + re.search(r"getScheme\(\) in \[([^\]]*)\]", rule).group(1) + "]"))

    def check(value):
        ok, scheme = go_parse_request_uri(value)
        if ok:
            return scheme in schemes
        ok, scheme = go_parse_request_uri("http://" + value)
        return ok and scheme in schemes
    return check


def _count_rule(rule: str):
    fields = re.findall(r"has\(self\.(\w+)\) \? 1 : 0", rule)
    limit = int(re.search(r"<= (\d+)$", rule).group(1))
    return lambda obj: sum(f in obj for f in fields) <= limit


CEL_RULES = [
    (re.compile(r"^(\(has\(self\.\w+\) \? 1 : 0\)( \+ )?)+ <= \d+$"), _count_rule),
    (re.compile(r"^has\(self\.wasm\) != has\(self\.lua\)$"), lambda r: lambda o: ("wasm" in o) != ("lua" in o)),
    (re.compile(r'^self\.all\(key, !key\.contains\("\*"\)\)$'), lambda r: lambda o: all("*" not in k for k in o)),
    (re.compile(r"^self\.all\(key, key\.size\(\) != 0\)$"), lambda r: lambda o: all(len(k) for k in o)),
    (re.compile(r'^!self\.contains\("\*"\)$'), lambda r: lambda s: "*" not in s),
    (re.compile(r"^self\.size\(\) == 0$"), lambda r: lambda s: len(s) == 0),
    (re.compile(r"^0 < self && self <= 65535$"), lambda r: lambda n: 0 < n <= 65535),
    (re.compile(r"^isURL\(self\) \?"), _url_rule),
    (re.compile(r'^\(has\(self\.valueFrom\) \? self\.valueFrom : ""\) != "HOST" \|\| !has\(self\.value\)$'),
     lambda r: lambda o: o.get("valueFrom", "") != "HOST" or "value" not in o),
    (re.compile(r'^has\(self\.context\) \? \(\(self\.context == "WAYPOINT"\) \? has\(self\.waypoint\) : '
                r'!has\(self\.waypoint\)\) : !has\(self\.waypoint\)$'),
     lambda r: lambda o: (("waypoint" in o) if o.get("context") == "WAYPOINT" else ("waypoint" not in o))),
    (re.compile(r"^!has\(self\.minReplicaCount\) \|\| self\.minReplicaCount <= \(has\(self\.maxReplicaCount\) \? "
                r"self\.maxReplicaCount : 100\)$"),
     lambda r: lambda o: "minReplicaCount" not in o or o["minReplicaCount"] <= o.get("maxReplicaCount", 100)),
]


def cel_errors(schema, value, path="") -> list:
    """Evaluates the x-kubernetes-validations rules along `value`'s path through `schema`."""
    errors = []
    if not isinstance(schema, dict):
        return errors
    for validation in schema.get("x-kubernetes-validations", []):
        rule = " ".join(validation["rule"].split())
        for pattern, make in CEL_RULES:
            if pattern.search(rule):
                if not make(rule)(value):
                    errors.append(f"{path or '/'}: {validation.get('message', rule)}  [CEL: {rule}]")
                break
        else:
            errors.append(f"{path or '/'}: CEL rule not implemented by the test: {rule}")
    if isinstance(value, dict):
        for key, child in value.items():
            if key in schema.get("properties", {}):
                errors += cel_errors(schema["properties"][key], child, f"{path}/{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += cel_errors(schema["additionalProperties"], child, f"{path}/{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, child in enumerate(value):
            errors += cel_errors(schema["items"], child, f"{path}/{i}")
    return errors


# ---------------------------------------------------------------- ObjectMeta rules (apimachinery)

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def qualified_key_errors(key: str) -> list:
    prefix, _, name = key.rpartition("/")
    errors = []
    if prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        errors.append(f"key prefix {prefix!r} is not a DNS subdomain")
    if not name or len(name) > 63 or not QUALIFIED_NAME.match(name):
        errors.append(f"key name {name!r} is not a qualified name")
    return errors


def metadata_errors(meta: dict, namespaced: bool = True) -> list:
    errors = [f"metadata: {e.message}" for e in OBJECT_META.iter_errors(meta)]
    name = meta.get("name", "")
    if len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        errors.append(f"metadata.name {name!r} is not a DNS-1123 subdomain")
    if namespaced and not DNS_LABEL.match(meta.get("namespace", "")):
        errors.append(f"metadata.namespace {meta.get('namespace')!r} is not a DNS-1123 label")
    for key, value in (meta.get("labels") or {}).items():
        errors += [f"label {key}: {e}" for e in qualified_key_errors(key)]
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            errors.append(f"label {key}: value {value!r} is not a valid label value")
    annotations = meta.get("annotations") or {}
    for key in annotations:
        errors += [f"annotation {key}: {e}" for e in qualified_key_errors(key)]
    if sum(len(k) + len(str(v)) for k, v in annotations.items()) > 256 * 1024:
        errors.append("annotations exceed 256 KiB")
    return errors


def crd_errors(obj: dict) -> list:
    """Everything the API server would refuse in a custom resource, as messages."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in CRDS:
        return [f"no served CRD version for {key} in {SCHEMAS}"]
    _, schema = CRDS[key]
    validator = jsonschema.Draft202012Validator(strict_structural(schema), format_checker=FORMATS)
    errors = [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    errors += cel_errors(schema, obj)
    errors += metadata_errors(obj.get("metadata", {}))
    return errors


def peer_authentication_errors(obj: dict) -> list:
    """security.istio.io/v1 PeerAuthentication: no CRD schema is available here (shared/schemas
    has none), so its fields are checked by hand against istio/api security/v1/peer_authentication.proto."""
    errors = []
    spec = obj.get("spec", {})
    if set(spec) - {"selector", "mtls", "portLevelMtls"}:
        errors.append(f"/spec: unknown fields {sorted(set(spec) - {'selector', 'mtls', 'portLevelMtls'})}")
    for port, mtls in spec.get("portLevelMtls", {}).items():
        if not (port.isdigit() and 1 <= int(port) <= 65535):
            errors.append(f"/spec/portLevelMtls: {port!r} is not a port number")
        if mtls != {"mode": mtls.get("mode")} or mtls.get("mode") not in ("UNSET", "DISABLE", "PERMISSIVE", "STRICT"):
            errors.append(f"/spec/portLevelMtls/{port}: {mtls!r}")
    if "portLevelMtls" in spec and not spec.get("selector"):
        errors.append("/spec: portLevelMtls requires a workload selector")
    return errors + metadata_errors(obj.get("metadata", {}))


def k8s_errors(obj: dict) -> list:
    """A built-in kind against the Kubernetes OpenAPI schema (strict: unknown fields refused)."""
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"/{'/'.join(map(str, e.path))}: {e.message}"]
    errors = metadata_errors(obj["metadata"])
    return errors


# istio/istio operator/pkg/apis/types.go: IstioOperatorSpec's JSON fields. Since Istio 1.24 there
# is no in-cluster operator and no CRD: an IstioOperator is the input file of `istioctl install`.
ISTIO_OPERATOR_SPEC_FIELDS = {"profile", "installPackagePath", "hub", "tag", "namespace", "revision",
                              "compatibilityVersion", "meshConfig", "components", "values", "unvalidatedValues"}


def istio_operator_errors(obj: dict) -> list:
    """An IstioOperator overlay, by hand against IstioOperatorSpec; its meshConfig must be the
    part of MeshConfig we set (defaultConfig.extraStatTags: a list of tag names)."""
    errors = []
    if set(obj) - {"apiVersion", "kind", "metadata", "spec"}:
        errors.append(f"/: unknown fields {sorted(set(obj) - {'apiVersion', 'kind', 'metadata', 'spec'})}")
    spec = obj.get("spec", {})
    if set(spec) - ISTIO_OPERATOR_SPEC_FIELDS:
        errors.append(f"/spec: unknown fields {sorted(set(spec) - ISTIO_OPERATOR_SPEC_FIELDS)}")
    mesh = spec.get("meshConfig", {})
    if set(mesh) != {"defaultConfig"} or set(mesh["defaultConfig"]) != {"extraStatTags"}:
        errors.append(f"/spec/meshConfig: {mesh!r}")
    elif not all(isinstance(t, str) and re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", t) for t in mesh["defaultConfig"]["extraStatTags"]):
        errors.append("/spec/meshConfig/defaultConfig/extraStatTags: not a list of tag names")
    return errors


def object_errors(obj: dict) -> list:
    """A custom resource against its CRD, a built-in kind against Kubernetes' schema."""
    if (obj.get("apiVersion"), obj.get("kind")) == ("security.istio.io/v1", "PeerAuthentication"):
        return peer_authentication_errors(obj)
    if (obj.get("apiVersion"), obj.get("kind")) == ("install.istio.io/v1alpha1", "IstioOperator"):
        return istio_operator_errors(obj)
    group = obj["apiVersion"].split("/")[0]
    return crd_errors(obj) if "." in group and not group.endswith("k8s.io") else k8s_errors(obj)


def deployment_with(patch: dict) -> dict:
    """A minimal Deployment with the rendered patch merged in (the patch must only touch the
    pod template's annotations and labels; a strategic merge keeps the app's own labels)."""
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "cart", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "cart"}},
                 "template": {"metadata": {"labels": {"app": "cart"}},
                              "spec": {"containers": [{"name": "cart", "image": "cart:1"}]}}},
    }
    assert set(patch) == {"spec"} and set(patch["spec"]) == {"template"} \
        and set(patch["spec"]["template"]) == {"metadata"} \
        and set(patch["spec"]["template"]["metadata"]) <= {"annotations", "labels"}, patch
    metadata = patch["spec"]["template"]["metadata"]
    deployment["spec"]["template"]["metadata"]["annotations"] = metadata["annotations"]
    deployment["spec"]["template"]["metadata"]["labels"].update(metadata.get("labels", {}))
    return deployment


# ---------------------------------------------------------------- promtool

def promtool_check_rules(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(PROMTOOL), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)


def assert_promql_parses(tmp_path: Path, expressions: dict):
    """promtool parses each expression (as a recording rule's expr)."""
    rules = {"groups": [{"name": "parse", "rules": [
        {"record": f"parse:{re.sub(r'[^a-zA-Z0-9_]', '_', name)}", "expr": expr} for name, expr in expressions.items()]}]}
    path = tmp_path / f"parse-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool_check_rules(path)
    assert result.returncode == 0, f"promtool rejects {expressions}:\n{result.stdout}{result.stderr}"


# ================================================================ fixtures

CASES = [(c, m) for c in CONTRACTS for m in MODES]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """(contract, mode) -> (Rendered, Expected), rendered once per module."""
    cache = {}

    def get(contract: Path, mode: str) -> tuple[Rendered, Expected]:
        if (contract, mode) not in cache:
            out = tmp_path_factory.mktemp(f"{contract.stem}-{mode}")
            cache[(contract, mode)] = (render(contract, out, *MODES[mode]), Expected(contract, MODES[mode]))
        return cache[(contract, mode)]
    return get


def case_id(case):
    return f"{case[0].stem}-{case[1]}"


# ================================================================ schema validation

@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_object_is_valid_for_the_cluster(rendered, case):
    r, expected = rendered(*case)
    assert set(r.texts) == expected.files, f"files: {sorted(r.texts)}"
    validated = []
    for file in sorted(r.texts):
        for obj in r.docs(file):
            if "apiVersion" not in obj:
                continue  # Helm values, Deployment patch, rule files: checked below
            errors = object_errors(obj)
            assert not errors, f"{file}: {obj['kind']} {obj['metadata'].get('name')}:\n  " + "\n  ".join(errors)
            validated.append((obj["apiVersion"], obj["kind"]))
    kinds = {k for _, k in validated}
    assert {"EnvoyFilter", "WasmPlugin", "TrafficExtension", "IstioOperator", "PrometheusRule"} <= kinds
    if expected.contract.get("exposition"):
        assert "PodMonitor" in kinds
    if expected.target and expected.autoscaling:
        assert {"HorizontalPodAutoscaler", "ScaledObject"} <= kinds
    # The Deployment patch is a valid part of a Deployment.
    patch = r.one("pod-annotations.yaml")
    assert not k8s_errors(deployment_with(patch)), k8s_errors(deployment_with(patch))


@pytest.mark.parametrize("mutation, expected_error", [
    (lambda o: o["spec"].update(phase="STAT"), "'STAT' is not one of"),
    (lambda o: o["spec"].update(plugin_config={}), "Additional properties are not allowed"),
    (lambda o: o["spec"].update(priority=2 ** 31), "is not a 'int32'"),
    (lambda o: o["spec"].update(sha256="ABC"), "does not match"),
    (lambda o: o["spec"].update(url="ftp://example.com/metricpact.wasm"), "url must have schema one of"),
    (lambda o: o["spec"].update(targetRefs=[{"kind": "Service", "name": "cart"}]), "only one of targetRefs or selector"),
    (lambda o: o["spec"]["selector"]["matchLabels"].update(app="*"), "wildcard not allowed"),
    (lambda o: o["metadata"].update(name="Metricpact_Cart"), "is not a DNS-1123 subdomain"),
], ids=["enum", "unknown-field", "int32", "pattern", "cel-url-scheme", "cel-selector-xor-targetrefs",
        "cel-wildcard", "object-meta"])
def test_schema_check_rejects_invalid_objects(rendered, mutation, expected_error):
    r, _ = rendered(ROOT / "contracts/http-server.yaml", "workload")
    plugin = r.docs("wasmplugin.yaml")[0]
    assert not crd_errors(plugin)
    broken = copy.deepcopy(plugin)
    mutation(broken)
    errors = crd_errors(broken)
    assert any(expected_error in e for e in errors), errors


def test_schema_check_enforces_traffic_extension_cel_and_keda_cel(rendered):
    r, _ = rendered(ROOT / "contracts/rest-api.yaml", "default")
    ext = r.docs("trafficextension.yaml")[0]
    both = copy.deepcopy(ext)
    both["spec"]["lua"] = {"inlineCode": "function envoy_on_request(h) end"}
    assert any("exactly one of wasm or lua" in e for e in crd_errors(both))
    neither = copy.deepcopy(ext)
    del neither["spec"]["wasm"]
    assert not any("exactly one of wasm or lua" in e for e in crd_errors(ext))
    assert any("exactly one of wasm or lua" in e for e in crd_errors(neither))
    keda = r.one("keda-scaledobject.yaml")
    inverted = copy.deepcopy(keda)
    inverted["spec"]["minReplicaCount"] = inverted["spec"]["maxReplicaCount"] + 1
    assert any("minReplicaCount must be less than or equal to maxReplicaCount" in e for e in crd_errors(inverted))
    hpa = r.one("hpa.yaml")
    wrong = copy.deepcopy(hpa)
    wrong["spec"]["metrics"][0]["pods"]["target"]["averageValue"] = {"value": 150}
    assert k8s_errors(wrong)
    wrong = copy.deepcopy(hpa)
    wrong["spec"]["behaviour"] = wrong["spec"].pop("behavior")
    assert k8s_errors(wrong)


def test_every_cel_rule_of_our_crds_is_implemented():
    """No CRD rule on the kinds we render is left unevaluated (cel_errors would report it)."""
    def rules(schema):
        if isinstance(schema, dict):
            for v in schema.get("x-kubernetes-validations", []):
                yield " ".join(v["rule"].split())
            for child in schema.values():
                yield from rules(child)
        elif isinstance(schema, list):
            for child in schema:
                yield from rules(child)
    ours = {"EnvoyFilter", "WasmPlugin", "TrafficExtension", "ScaledObject", "PodMonitor", "PrometheusRule"}
    for (_, kind), (path, schema) in CRDS.items():
        if kind in ours:
            for rule in rules(schema):
                assert any(p.search(rule) for p, _ in CEL_RULES), f"{path.name}: {rule}"


@pytest.mark.parametrize("value", ["yes", "on", "1.10", "0x1f", "null", "012", "true"])
def test_ambiguous_selector_values_stay_strings(tmp_path, value):
    r = render(ROOT / "contracts/http-server.yaml", tmp_path, "--selector", f"version={value}")
    assert r.one("envoyfilter.yaml")["spec"]["workloadSelector"]["labels"] == {"version": value, "metricpact.io/wasm": "mounted"}
    for file in ("wasmplugin.yaml", "trafficextension.yaml"):
        for doc in r.docs(file):
            assert doc["spec"]["selector"]["matchLabels"] == {"version": value, "metricpact.io/wasm": "mounted"}
            assert not crd_errors(doc)


# ================================================================ exact content

@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_metadata_namespace_and_selector(rendered, case):
    r, expected = rendered(*case)
    contract = expected.plugin_config["contract"]
    for file in r.texts:
        for obj in r.docs(file):
            if obj.get("kind") == "IstioOperator":
                assert "metadata" not in obj  # an istioctl input file, not an object in the cluster
                continue
            if "metadata" not in obj:
                continue
            meta = obj["metadata"]
            assert meta["namespace"] == expected.namespace
            assert meta["name"] in (expected.object_name, f"{expected.object_name}-client",
                                    f"{expected.object_name}-metrics")
            labels = {"app.kubernetes.io/name": "metricpact", "app.kubernetes.io/managed-by": "metricpact"}
            if obj["kind"] in ("PodMonitor", "PrometheusRule"):
                labels |= MONITOR_LABELS  # what kube-prometheus-stack's default selectors match
            assert meta["labels"] == labels
            assert meta["annotations"] == {"metricpact.io/contract": f"{contract['name']} {contract['version']}",
                                           "metricpact.io/contract-hash": contract["hash"]}
    envoy_filter = r.one("envoyfilter.yaml")
    if expected.selector:
        assert envoy_filter["spec"]["workloadSelector"] == {"labels": expected.selector}
    else:
        assert "workloadSelector" not in envoy_filter["spec"]
    for file in ("wasmplugin.yaml", "trafficextension.yaml"):
        for doc in r.docs(file):
            assert doc["spec"].get("selector") == ({"matchLabels": expected.selector} if expected.selector else None)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_envoy_filter_inserts_the_wasm_filter_where_wasm_plugin_puts_a_stats_plugin(rendered, case):
    r, expected = rendered(*case)
    patches = r.one("envoyfilter.yaml")["spec"]["configPatches"]
    http_patches = [p for p in patches if p["applyTo"] == "HTTP_FILTER"]
    assert [(p["match"]["context"], p["patch"]["value"]["name"]) for p in http_patches] == \
        [(context, name) for name, context, _, _ in expected.sides()]
    extension_configs = {p["patch"]["value"]["name"]: p for p in patches if p["applyTo"] == "EXTENSION_CONFIG"}
    assert len(patches) == len(http_patches) + len(extension_configs)
    for (name, context, _, config), patch in zip(expected.sides(), http_patches):
        assert patch["match"]["listener"] == {"filterChain": {"filter": {"name": HCM, "subFilter": {"name": ANCHOR}}}}
        assert patch["patch"]["operation"] == "INSERT_BEFORE"
        value = patch["patch"]["value"]
        if expected.remote:
            # Remote modules go through ECDS, which istio-agent intercepts, downloads and verifies.
            assert value == {"name": name, "config_discovery": {
                "config_source": {"ads": {}, "initial_fetch_timeout": "0s"}, "type_urls": [WASM_TYPE]}}
            extension = extension_configs[name]
            assert extension["patch"]["operation"] == "ADD" and "match" not in extension
            value = extension["patch"]["value"]
            code = {"remote": {"http_uri": {"uri": expected.remote, "cluster": "_", "timeout": "30s"},
                               "sha256": expected.sha256}}
        else:
            assert not extension_configs
            code = {"local": {"filename": expected.wasm_file}}
        assert value["name"] == name
        typed = value["typed_config"]
        assert typed["@type"] == WASM_TYPE
        wasm = typed["config"]
        assert wasm["name"] == wasm["root_id"] == name
        assert wasm["failure_policy"] == "FAIL_OPEN" and "fail_open" not in wasm
        assert wasm["vm_config"]["runtime"] == "envoy.wasm.runtime.v8"
        assert wasm["vm_config"]["code"] == code
        assert wasm["configuration"]["@type"] == "type.googleapis.com/google.protobuf.StringValue"
        if name == "metricpact":
            assert wasm["configuration"]["value"] == expected.plugin_config_text  # byte for byte
        assert json.loads(wasm["configuration"]["value"]) == config


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_wasm_plugin_and_traffic_extension(rendered, case):
    r, expected = rendered(*case)
    plugins, extensions = r.docs("wasmplugin.yaml"), r.docs("trafficextension.yaml")
    module = ({"url": expected.remote, "sha256": expected.sha256} if expected.remote
              else {"url": f"file://{expected.wasm_file}"})
    assert len(plugins) == len(extensions) == len(expected.sides())
    for (name, _, mode, config), plugin, extension in zip(expected.sides(), plugins, extensions):
        spec = plugin["spec"]
        assert spec["phase"] == "STATS" and spec["failStrategy"] == "FAIL_OPEN"
        assert spec["match"] == [{"mode": mode}]
        assert spec["pluginName"] == name and spec["type"] == "HTTP"
        assert {k: spec.get(k) for k in module} == module and ("sha256" in spec) == bool(expected.remote)
        assert spec["pluginConfig"] == config
        ext = extension["spec"]
        assert ext["phase"] == "STATS" and ext["match"] == [{"mode": mode}]
        wasm = ext["wasm"]
        assert wasm["failStrategy"] == "FAIL_OPEN" and wasm["pluginName"] == name and wasm["type"] == "HTTP"
        assert {k: wasm.get(k) for k in module} == module
        assert wasm["pluginConfig"] == config
        assert "lua" not in ext
    assert [p["spec"]["match"][0]["mode"] for p in plugins] == (["SERVER", "CLIENT"] if expected.client else ["SERVER"])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_proxy_config_extracts_every_label_and_buckets_the_histograms(rendered, case):
    r, expected = rendered(*case)
    annotations = r.pod_annotations()
    tags = expected.extra_stat_tags()
    proxy_config = yaml.safe_load(annotations["proxy.istio.io/config"])
    assert proxy_config == {"extraStatTags": tags}
    # Mesh-wide only the tags: metrics merging stays on for every other workload.
    mesh = {"defaultConfig": {"extraStatTags": tags}}
    assert r.one("mesh-config.yaml") == {"meshConfig": mesh}
    assert r.one("istio-operator.yaml") == {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
                                             "spec": {"meshConfig": mesh}}
    # Tag names are spliced unescaped into unanchored regexes (see reference/istio.md).
    assert len(set(tags)) == len(tags)
    for tag in tags:
        assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", tag), tag
        assert tag not in ISTIO_TAG_NAMES | {"pod", "namespace"}, tag
        assert not [other for other in tags if other != tag and other.endswith(tag)], f"{tag} is a suffix"
    # Buckets: keyed by the stat-name prefix Envoy matches before tag extraction.
    buckets = json.loads(annotations["sidecar.istio.io/statsHistogramBuckets"])
    want = {f"wasmcustom.{config['duration']['name']}.": config["duration"]["buckets"]
            for _, _, _, config in expected.sides()}
    assert buckets == want
    for bounds in buckets.values():
        assert bounds == sorted(set(bounds)) and all(b > 0 for b in bounds)
    contract_buckets = (expected.contract.get("metrics", {}).get("duration") or {}).get("buckets")
    if contract_buckets:
        assert buckets[f"wasmcustom.{expected.plugin_config['duration']['name']}."] == contract_buckets
    # The same as the CLI's stats_config for plain Envoy (envoy-stats), which test_traffic runs.
    stats = json.loads(harness.run_cli("envoy-stats", str(case[0])).stdout)
    assert [t["tag_name"] for t in stats["stats_tags"]] == tags
    assert {s["match"]["prefix"]: s["buckets"] for s in stats["histogram_bucket_settings"]}.items() <= buckets.items()
    # A contract that rewrites the app's exposition turns metrics merging off for its pods (the
    # scrape must pass the sidecar), annotates the metrics port for scraping, and labels the pods
    # for the rendered sidecar-stats scrape (and for Istio's PodMonitor to skip).
    exposition = expected.contract.get("exposition")
    scrape = {k: v for k, v in annotations.items() if k.startswith("prometheus.")}
    pod_labels = r.pod_template_labels()
    if exposition:
        port = expected.exposition_port()
        assert scrape == {"prometheus.istio.io/merge-metrics": "false", "prometheus.io/scrape": "true",
                          "prometheus.io/port": str(port), "prometheus.io/path": exposition["paths"][0]}
        assert {k: v for k, v in pod_labels.items() if k != "metricpact.io/wasm"} == {
            "metricpact.io/scrape-sidecar": "true", "istio-prometheus-ignore": "true"}
        if expected.selector:
            pa = r.one("peer-authentication.yaml")
            assert pa["spec"] == {"portLevelMtls": {str(port): {"mode": "PERMISSIVE"}},
                                  "selector": {"matchLabels": {k: v for k, v in expected.selector.items()
                                                               if k != "metricpact.io/wasm"}}}
    else:
        assert scrape == {}
        assert {k: v for k, v in pod_labels.items() if k != "metricpact.io/wasm"} == {}
    # File mode mounts the module; remote mode needs no volume.
    if expected.remote:
        assert set(annotations) - set(scrape) == {"proxy.istio.io/config", "sidecar.istio.io/statsHistogramBuckets"}
    else:
        volume = json.loads(annotations["sidecar.istio.io/userVolume"])
        mount = json.loads(annotations["sidecar.istio.io/userVolumeMount"])
        assert volume == {"metricpact-wasm": {"configMap": {"name": "metricpact-wasm"}}}
        assert mount == {"metricpact-wasm": {"mountPath": os.path.dirname(expected.wasm_file), "readOnly": True}}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_recording_rules_pass_promtool(rendered, case, tmp_path):
    r, expected = rendered(*case)
    result = promtool_check_rules(r.directory / "recording-rules.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    counter, histogram = expected.plugin_config["requests"]["name"], expected.plugin_config["duration"]["name"]
    rate, latency = expected.window("rate_window", "1m"), expected.window("latency_window", "2m")
    base = counter.removesuffix('_total')
    errors = [l["name"] for l in expected.plugin_config["labels"] if l["sources"] == [{"kind": "response_error_type"}]]
    assert "SUCCESS: %d rules found" % (3 if errors else 2) in result.stdout, result.stdout
    groups = r.one("recording-rules.yaml")["groups"]
    all_requests = f"sum by (namespace, pod) (rate({counter}[{rate}]))"
    assert groups == [{"name": f"metricpact-{expected.contract['name']}", "rules": [
        {"record": f"namespace_pod:{base}:rate{rate}", "expr": all_requests},
        *([{"record": f"namespace_pod:{base}:error_ratio_rate{rate}",
            "expr": f'(sum by (namespace, pod) (rate({counter}{{{errors[0]}!=""}}[{rate}])) or {all_requests} * 0)'
                    f" / {all_requests}"}] if errors else []),
        {"record": f"namespace_pod:{histogram}:p95_{latency}",
         "expr": f"histogram_quantile(0.95, sum by (namespace, pod, le) (rate({histogram}_bucket[{latency}])))"},
    ]}]
    # The same groups as a PrometheusRule for the operator, whose spec promtool checks too.
    rule = r.one("prometheus-rule.yaml")
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"] == {"groups": groups}
    spec = tmp_path / "prometheus-rule-spec.yaml"
    spec.write_text(yaml.safe_dump(rule["spec"]))
    assert promtool_check_rules(spec).returncode == 0


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_adapter_rules_serve_the_metrics_the_hpa_asks_for(rendered, case, tmp_path):
    r, expected = rendered(*case)
    config = r.one("prometheus-adapter-rules.yaml")
    label = expected.workload_label()
    assert set(config) == ({"rules", "externalRules"} if label else {"rules"})
    counter, histogram = expected.plugin_config["requests"]["name"], expected.plugin_config["duration"]["name"]
    rate, latency = expected.window("rate_window", "1m"), expected.window("latency_window", "2m")
    # Per-pod QPS: a custom (Pods) metric. Every rule discovers its metric from the info series,
    # which a pod's filter reports from its start, and names the traffic series in its query.
    info = "metricpact_contract_info"
    qps_name = f"{counter.removesuffix('_total')}_per_second"
    rule, = config["rules"]
    assert rule == {
        "seriesQuery": f'{info}{{namespace!="",pod!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": f"^{info}$", "as": qps_name},
        "metricsQuery": f"sum(rate({counter}{{<<.LabelMatchers>>}}[{rate}])) by (<<.GroupBy>>)"
                        f" or sum({info}{{<<.LabelMatchers>>}}) by (<<.GroupBy>>) * 0",
    }
    pattern = re.compile(rule["name"]["matches"])
    assert pattern.sub(go_template_replacement(rule["name"]["as"]), info) == qps_name
    expanded = PrometheusAdapter.expand(rule, info, "shop", ["cart-7d9f8b6c5-x2x8k", "cart-7d9f8b6c5-q4w7n"])
    assert_promql_parses(tmp_path, {counter: expanded, f"series_{counter}": rule["seriesQuery"]})
    if not label:
        return
    # The workload-wide p95: an external metric, one value for the whole workload; NaN (no traffic)
    # never reaches the adapter, which would turn it into MinInt64 (external-provider/metric_converter.go).
    external, = config["externalRules"]
    assert external == {
        "seriesQuery": f'{info}{{namespace!="",{label}!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}}},
        "name": {"matches": f"^{info}$", "as": f"{histogram}_p95"},
        "metricsQuery": f"histogram_quantile(0.95, sum(rate({histogram}_bucket{{<<.LabelMatchers>>}}[{latency}])) by (le)) >= 0"
                        f" or sum({info}{{<<.LabelMatchers>>}}) * 0",
    }
    expanded = PrometheusAdapter.expand_external(external, info, "shop", {label: "cart"})
    assert expanded == (f'histogram_quantile(0.95, sum(rate({histogram}_bucket{{{label}="cart",namespace="shop"}}[{latency}]))'
                        f' by (le)) >= 0 or sum({info}{{{label}="cart",namespace="shop"}}) * 0')
    assert_promql_parses(tmp_path, {"external": expanded, "external_series": external["seriesQuery"]})
    if "hpa.yaml" in r.texts:
        hpa = r.one("hpa.yaml")["spec"]["metrics"]
        assert [m["pods"]["metric"]["name"] for m in hpa if m["type"] == "Pods"] == [f"{counter.removesuffix('_total')}_per_second"]
        assert [m["external"]["metric"]["name"] for m in hpa if m["type"] == "External"] == [f"{histogram}_p95"]


@pytest.mark.parametrize("case", [c for c in CASES if c[1] != "remote"], ids=case_id)
def test_hpa_and_scaled_object_follow_the_contract(rendered, case, tmp_path):
    r, expected = rendered(*case)
    if not (expected.target and expected.autoscaling):
        assert not set(r.texts) & AUTOSCALING_FILES
        return
    a = expected.autoscaling
    counter, histogram = expected.plugin_config["requests"]["name"], expected.plugin_config["duration"]["name"]
    behavior = camel_behavior(a.get("behavior"))
    target_ref = {"apiVersion": "apps/v1", "kind": expected.target_kind, "name": expected.target}
    p95_threshold = quantity(a["p95_latency_ms"] * expected.duration_unit_per_ms())
    label = expected.workload_label()
    assert label, "the shipped contracts with autoscaling select the workload by its label"

    hpa = r.one("hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["kind"] == "HorizontalPodAutoscaler"
    assert hpa["spec"] == {
        "scaleTargetRef": target_ref,
        "minReplicas": a["min_replicas"], "maxReplicas": a["max_replicas"],
        "metrics": [
            {"type": "Pods", "pods": {"metric": {"name": f"{counter.removesuffix('_total')}_per_second"},
                                      "target": {"type": "AverageValue", "averageValue": quantity(a["qps_per_pod"])}}},
            # One workload-wide p95 (the same quantity KEDA reads), not an average of per-pod p95s.
            {"type": "External", "external": {
                "metric": {"name": f"{histogram}_p95", "selector": {"matchLabels": {label: expected.target}}},
                "target": {"type": "Value", "value": p95_threshold}}},
        ],
        "behavior": behavior,
    }

    keda = r.one("keda-scaledobject.yaml")
    matchers = expected.workload_matchers()
    reporting = f"sum(metricpact_contract_info{{{matchers}}}) * 0"
    rate, latency = expected.window("rate_window", "1m"), expected.window("latency_window", "2m")
    server = expected.arg("--prometheus-url") or a.get("prometheus_url", "http://prometheus.istio-system.svc:9090")
    assert keda["spec"] == {
        "scaleTargetRef": target_ref,
        "minReplicaCount": a["min_replicas"], "maxReplicaCount": a["max_replicas"],
        # Missing metrics: after 3 failed reads keep the current replicas (never below the minimum).
        "fallback": {"failureThreshold": 3, "replicas": a["min_replicas"], "behavior": "currentReplicasIfHigher"},
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior}},
        "triggers": [
            {"type": "prometheus", "name": "qps-per-pod", "metricType": "AverageValue", "metadata": {
                "serverAddress": server, "threshold": quantity(a["qps_per_pod"]), "ignoreNullValues": "false",
                "query": f"sum(rate({counter}{{{matchers}}}[{rate}])) or {reporting}"}},
            {"type": "prometheus", "name": "p95-latency", "metricType": "Value", "metadata": {
                "serverAddress": server, "threshold": p95_threshold, "ignoreNullValues": "false",
                "query": f"histogram_quantile(0.95, sum(rate({histogram}_bucket{{{matchers}}}[{latency}])) by (le)) >= 0"
                         f" or {reporting}"}},
        ],
    }
    assert_promql_parses(tmp_path, {t["name"]: t["metadata"]["query"] for t in keda["spec"]["triggers"]})
    assert "KEDA >= 2.18" in r.texts["keda-scaledobject.yaml"].splitlines()[0]


def test_without_a_workload_label_check_warns_and_render_falls_back_to_a_pod_regex(tmp_path):
    text = (ROOT / "contracts/http-server.yaml").read_text()
    text, n = re.subn(r"^  - name: k8s_workload_name\n(    #.*\n)*    from: node\.WORKLOAD_NAME\n", "", text, flags=re.M)
    assert n == 1
    contract = tmp_path / "no-workload-label.yaml"
    contract.write_text(text)
    check = harness.run_cli("check", str(contract), check=False)
    line = 2 + text.splitlines().index("autoscaling:")  # at the section's first key
    assert check.returncode == 0 and check.stdout == (
        f"{contract}:{line}:3: warning: no label takes its value from node.WORKLOAD_NAME alone, so the rendered "
        "autoscalers select the workload's pods by a pod-name regex (which misses the pods of workloads named with "
        "~47+ characters, whose generated names Kubernetes cuts) and the HPA gets no p95 metric; add "
        "`{name: k8s_workload_name, from: node.WORKLOAD_NAME}` to `labels`\n"), check.stdout + check.stderr
    r = render(contract, tmp_path / "out", "--namespace", "shop", "--workload", "cart")
    regex = f"cart-{SUFFIX}{{1,10}}-{SUFFIX}{{5}}"
    query = r.one("keda-scaledobject.yaml")["spec"]["triggers"][0]["metadata"]["query"]
    assert query == (f'sum(rate(http_server_requests_total{{namespace="shop",pod=~"{regex}"}}[1m]))'
                     f' or sum(metricpact_contract_info{{namespace="shop",pod=~"{regex}"}}) * 0')
    assert [m["type"] for m in r.one("hpa.yaml")["spec"]["metrics"]] == ["Pods"]
    assert "No p95 metric" in r.texts["hpa.yaml"]
    assert "externalRules" not in r.one("prometheus-adapter-rules.yaml")
    # The fallback regex matches the workload's Deployment pods, not another workload's.
    pattern = re.compile(regex)
    assert pattern.fullmatch("cart-7d9f8b6c5-x2x8k")
    assert not pattern.fullmatch("cartx-7d9f8b6c5-x2x8k") and not pattern.fullmatch("cart-canary-7d9f8b6c5-x2x8k")


@pytest.mark.parametrize("kind, api_version", [("Deployment", "apps/v1"), ("StatefulSet", "apps/v1"),
                                               ("Rollout", "argoproj.io/v1alpha1")])
def test_every_workload_kind_is_scaled_and_selected_by_its_workload_name(tmp_path, kind, api_version):
    r = render(ROOT / "contracts/http-server.yaml", tmp_path, "--namespace", "shop", "--workload", "cart",
               "--workload-kind", kind)
    ref = {"apiVersion": api_version, "kind": kind, "name": "cart"}
    assert r.one("hpa.yaml")["spec"]["scaleTargetRef"] == ref
    assert r.one("keda-scaledobject.yaml")["spec"]["scaleTargetRef"] == ref
    assert 'k8s_workload_name="cart"' in r.one("keda-scaledobject.yaml")["spec"]["triggers"][0]["metadata"]["query"]
    assert f"patch {kind.lower()} cart" in r.texts["pod-annotations.yaml"]
    bad = harness.run_cli("render", "--contract", str(ROOT / "contracts/http-server.yaml"), "--out", str(tmp_path / "x"),
                          "--workload", "cart", "--workload-kind", "DaemonSet", check=False)
    assert bad.returncode == 2 and "--workload-kind must be one of Deployment, StatefulSet, Rollout" in bad.stderr


def test_render_needs_a_sha256_for_a_remote_module(tmp_path):
    result = harness.run_cli("render", "--contract", str(CONTRACTS[0]), "--out", str(tmp_path),
                             "--wasm-url", REMOTE_URL, check=False)
    assert result.returncode == 2 and "--wasm-sha256" in result.stderr, result.stderr
    result = harness.run_cli("render", "--contract", str(CONTRACTS[0]), "--out", str(tmp_path),
                             "--wasm-url", REMOTE_URL, "--wasm-sha256", "A" * 64, check=False)
    assert result.returncode == 2, result.stderr


@pytest.mark.parametrize("case", [c for c in CASES if c[0].stem == "rest-api"], ids=case_id)
def test_unmerged_pods_get_a_sidecar_scrape_in_each_prometheus_setup(rendered, case):
    """With merging off nothing else scrapes the sidecar's :15090: render the job (annotation-driven
    Prometheus) and the PodMonitor (Prometheus Operator) that do, for the labelled pods only."""
    r, expected = rendered(*case)
    port, path = expected.exposition_port(), expected.contract["exposition"]["paths"][0]
    workload = {k: v for k, v in expected.selector.items() if k != "metricpact.io/wasm"}
    monitor = r.one("podmonitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    guard = [{"action": "drop", "sourceLabels": ["__meta_kubernetes_pod_annotation_prometheus_io_port"],
              "regex": "15020|15090"}]
    want = {"selector": {"matchLabels": {**workload, "metricpact.io/scrape-sidecar": "true"}},
            "podMetricsEndpoints": [
                {"port": "http-envoy-prom", "path": "/stats/prometheus", "interval": "15s", "relabelings": guard},
                {"portNumber": port, "path": path, "interval": "15s"}]}
    if expected.namespace == "istio-system" and not expected.arg("--namespace") and \
            not (expected.contract.get("workload") or {}).get("namespace"):
        want["namespaceSelector"] = {"any": True}
    assert monitor["spec"] == want
    # The scrape job is the same whatever the workload: one per Prometheus.
    job, = r.one("prometheus-scrape-config.yaml")["scrape_configs"]
    assert job["job_name"] == "metricpact-sidecars" and job["honor_labels"] is True
    # Its own interval: a 1m global one (Helm's `prometheus` chart) would leave the 1m rate windows empty.
    assert job["scrape_interval"] == "15s"
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}] and job["metrics_path"] == "/stats/prometheus"
    rules = job["relabel_configs"]
    assert rules[:4] == [
        {"action": "keep", "source_labels": ["__meta_kubernetes_pod_label_metricpact_io_scrape_sidecar"], "regex": "true|both"},
        {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "http-envoy-prom"},
        {"action": "drop", "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_port"], "regex": "15020|15090"},
        {"action": "drop", "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "regex": "false"}]
    other, _ = rendered(ROOT / "contracts/rest-api.yaml", "workload")
    assert other.one("prometheus-scrape-config.yaml") == r.one("prometheus-scrape-config.yaml")


@pytest.mark.parametrize("mode", ["native", "both"])
def test_native_histograms_render_a_protobuf_scrape_of_the_sidecar_and_native_queries(tmp_path, mode):
    text = (ROOT / "contracts/http-server.yaml").read_text().replace("histogram: classic", f"histogram: {mode}")
    contract = tmp_path / "native.yaml"
    contract.write_text(text)
    r = render(contract, tmp_path / "out", "--namespace", "shop", "--selector", "app=cart", "--workload", "cart")
    for file in r.texts:
        for obj in r.docs(file):
            if "apiVersion" in obj:
                assert not object_errors(obj), (file, object_errors(obj))
    h = "http_server_request_duration_milliseconds"
    # Merging off for these pods (istio-agent's merge asks Envoy for text only), scraped by the job below.
    annotations = r.pod_annotations()
    assert {k: v for k, v in annotations.items() if k.startswith("prometheus.")} == {"prometheus.istio.io/merge-metrics": "false"}
    assert r.pod_template_labels() == {"metricpact.io/wasm": "mounted", "metricpact.io/scrape-sidecar": mode,
                                       "istio-prometheus-ignore": "true"}
    jobs = r.one("prometheus-scrape-config.yaml")["scrape_configs"]
    classic_job = next(j for j in jobs if j["job_name"] == "metricpact-sidecars")
    assert classic_job["relabel_configs"][0]["regex"] == "true|both" and "params" not in classic_job
    native_job, = [j for j in jobs if j is not classic_job]
    assert native_job["params"] == {"histogram_buckets": ["prometheusnative"], "native_histogram_max_buckets": ["160"]}
    assert native_job["scrape_native_histograms"] is True
    if mode == "native":
        assert native_job["job_name"] == "metricpact-sidecars-native"
        assert native_job["relabel_configs"][0]["regex"] == "native" and "metric_relabel_configs" not in native_job
    else:
        # The classic scrape keeps everything; this one only the workload's duration histograms.
        assert native_job["job_name"] == "metricpact-sidecars-native-metricpact-cart"
        assert native_job["relabel_configs"][0]["regex"] == "both"
        assert {"action": "keep", "source_labels": ["__meta_kubernetes_namespace"], "regex": "shop"} in native_job["relabel_configs"]
        assert {"action": "keep", "source_labels": ["__meta_kubernetes_pod_label_app"], "regex": "cart"} in native_job["relabel_configs"]
        assert native_job["metric_relabel_configs"] == [{"action": "keep", "source_labels": ["__name__"], "regex": h}]
    monitor = r.one("podmonitor.yaml")["spec"]
    assert monitor["scrapeNativeHistograms"] is True
    assert monitor["selector"]["matchLabels"] == {"app": "cart", "metricpact.io/scrape-sidecar": mode}
    params = [e.get("params") for e in monitor["podMetricsEndpoints"]]
    native_params = {"histogram_buckets": ["prometheusnative"], "native_histogram_max_buckets": ["160"]}
    assert params == ([native_params, None] if mode == "native" else [None, native_params, None])
    # The app's own metrics (istio-agent merged them before) where its prometheus.io annotations say.
    app = monitor["podMetricsEndpoints"][-1]
    assert "port" not in app and "portNumber" not in app
    assert [r["targetLabel"] for r in app["relabelings"] if r["action"] == "replace"] == \
        ["__address__", "__address__", "__metrics_path__"]
    # The queries read the native histogram: no _bucket, no `by (le)`.
    m = 'namespace="shop",k8s_workload_name="cart"'
    p95 = next(t for t in r.one("keda-scaledobject.yaml")["spec"]["triggers"] if t["name"] == "p95-latency")
    assert p95["metadata"]["query"] == (f"histogram_quantile(0.95, sum(rate({h}{{{m}}}[2m]))) >= 0"
                                        f" or sum(metricpact_contract_info{{{m}}}) * 0")
    external, = r.one("prometheus-adapter-rules.yaml")["externalRules"]
    assert external["metricsQuery"].startswith(f"histogram_quantile(0.95, sum(rate({h}{{<<.LabelMatchers>>}}[2m]))) >= 0")
    record = r.one("recording-rules.yaml")["groups"][0]["rules"][-1]
    assert record["expr"] == f"histogram_quantile(0.95, sum by (namespace, pod) (rate({h}[2m])))"
    assert promtool_check_rules(r.directory / "recording-rules.yaml").returncode == 0
    assert "Native histograms: Prometheus >= 3.8" in r.texts["prometheus-scrape-config.yaml"]


def test_the_pod_patch_keeps_the_pods_existing_proxy_config(tmp_path):
    """proxy.istio.io/config is one string: a patch replaces it whole. With --proxy-config the
    pod's current value is kept and metricpact's tags are added to its own extraStatTags."""
    contract = ROOT / "contracts/http-server.yaml"
    tags = Expected(contract, []).extra_stat_tags()
    existing = ("holdApplicationUntilProxyStarts: true\nproxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n"
                "extraStatTags:\n- grpc_method\n- http_route\n")
    path = tmp_path / "proxy-config.yaml"
    path.write_text(existing)
    want = {"holdApplicationUntilProxyStarts": True, "proxyMetadata": {"ISTIO_META_DNS_CAPTURE": "true"},
            "extraStatTags": ["grpc_method", "http_route", *[t for t in tags if t != "http_route"]]}  # the pod's first
    r = render(contract, tmp_path / "out", "--proxy-config", str(path))
    assert yaml.safe_load(r.pod_annotations()["proxy.istio.io/config"]) == want
    assert "holds the pod's existing ProxyConfig (--proxy-config)" in r.texts["pod-annotations.yaml"]
    # From stdin, as `kubectl get ... -o jsonpath=...` pipes it; an empty value is no ProxyConfig.
    result = subprocess.run([str(harness.CLI), "render", "--contract", str(contract), "--proxy-config", "-"],
                            input=existing, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    patch = next(d for d in load_yaml_documents(result.stdout) if "spec" in d and "template" in d["spec"])
    assert yaml.safe_load(patch["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"]) == want
    path.write_text("")
    r = render(contract, tmp_path / "empty", "--proxy-config", str(path))
    assert yaml.safe_load(r.pod_annotations()["proxy.istio.io/config"]) == {"extraStatTags": tags}
    for text, message in [("- a\n- b\n", "the existing ProxyConfig must be a YAML mapping, found a list"),
                          ("extraStatTags: grpc_method\n", "the existing ProxyConfig's extraStatTags must be a list, found a string"),
                          ("a: [\n", "the existing ProxyConfig is not valid YAML")]:
        path.write_text(text)
        result = harness.run_cli("render", "--contract", str(contract), "--out", str(tmp_path / "bad"),
                                 "--proxy-config", str(path), check=False)
        assert result.returncode == 2 and f"{path}: {message}" in result.stderr, result.stderr


# ================================================================ file mode

def test_file_mode_module_fits_in_its_configmap():
    """File mode mounts metricpact.wasm from the `metricpact-wasm` ConfigMap; Kubernetes'
    ValidateConfigMap refuses more than 1 MiB of data + binaryData."""
    size = harness.WASM.stat().st_size
    assert size <= 1024 * 1024, f"metricpact.wasm is {size} bytes: too big for file mode's ConfigMap (1 MiB)"


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: c.stem)
def test_file_mode_objects_only_select_pods_that_mount_the_module(rendered, contract):
    """In file mode the module exists only in pods carrying the userVolume annotations; a filter
    applied to any other sidecar is a config error there (Envoy refuses it; FAIL_OPEN does not
    apply: see test_istio_e2e.py). So file-mode objects must select the annotated workload."""
    r, expected = rendered(contract, "default")
    assert expected.selector["metricpact.io/wasm"] == "mounted"
    assert r.one("pod-annotations.yaml")["spec"]["template"]["metadata"]["labels"]["metricpact.io/wasm"] == "mounted"
    assert r.one("envoyfilter.yaml")["spec"]["workloadSelector"]["labels"]
    for file in ("wasmplugin.yaml", "trafficextension.yaml"):
        for doc in r.docs(file):
            assert doc["spec"]["selector"]["matchLabels"]


# ================================================================ drift

@pytest.mark.parametrize("directory", list(DRIFT))
def test_checked_in_manifests_match_the_renderer(tmp_path, directory):
    """envoyfilter/ is generated: `make envoyfilter` re-renders it."""
    checked_in = ROOT / directory
    fresh = tmp_path / "fresh"
    subprocess.run([str(harness.CLI), "render", *DRIFT[directory], "--out", str(fresh)], cwd=ROOT,
                   check=True, capture_output=True, timeout=60)
    hint = f"{directory}/ is out of date with `metricpact render`: run `make envoyfilter`"
    assert checked_in.is_dir(), f"{directory}/ is missing: run `make envoyfilter`"
    have = {p.name for p in checked_in.glob("*.yaml")}
    want = {p.name for p in fresh.glob("*.yaml")}
    assert have == want, f"{hint} (files differ: missing {sorted(want - have)}, stale {sorted(have - want)})"
    _, mismatch, errors = filecmp.cmpfiles(checked_in, fresh, sorted(want), shallow=False)
    assert not mismatch and not errors, f"{hint} (changed: {mismatch + errors})"


@pytest.mark.parametrize("path", sorted((ROOT / "envoyfilter").rglob("*.yaml")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_checked_in_manifests_are_valid_for_the_cluster(path):
    for obj in load_yaml_documents(path.read_text()):
        if "apiVersion" in obj:
            errors = object_errors(obj)
            assert not errors, f"{obj['kind']}: " + "\n  ".join(errors)
        elif path.name == "pod-annotations.yaml":
            assert not k8s_errors(deployment_with(obj))
    if path.name == "recording-rules.yaml":
        result = promtool_check_rules(path)
        assert result.returncode == 0, result.stdout + result.stderr
