"""metricpact delivered to a running Envoy dynamically, as Istio delivers it: the Wasm HTTP
filter over ECDS (WasmPlugin, EnvoyFilter EXTENSION_CONFIG) and the whole listener over LDS
(EnvoyFilter patches), both from files Envoy watches (replaced atomically: write, then rename).

An update the filter refuses (bad JSON, a contract it rejects, a module that does not load) is
rejected by Envoy with a clear log line, and the running contract keeps serving and counting
with its labels; a valid update then takes effect. What `failure_policy` does and does not
cover is pinned down here too: a VM that fails at run time (a module that traps: what happens
to the request in flight and to the ones after it, per policy), and a first ECDS configuration
that is refused (no previous configuration to keep)."""

import json
import re
import os
from pathlib import Path

import pytest

from harness import ISTIO_NODE_METADATA, WASM, Envoy, bootstrap, compile_contract, free_port, wait_until, \
    wasm_http_filter, write_contract

REQUESTS = "http_server_requests_total"
POD = "cart-7d9f8b6c5-x2x8k"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
NOOP_TYPE = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"

V1 = """
format: metricpact/v1
name: dyn
version: 1.0.0
labels:
  - {name: http_route, from: request.route}
  - {name: http_response_status_code, from: response.status_code}
  - {name: k8s_pod_name, from: node.NAME}
routes:
  unmatched: raw
"""
# v2 adds a label. Tag extraction lives in the bootstrap (Istio: extraStatTags), so the Envoy
# starts with v2's stats_config, which extracts v1's labels too.
V2 = """
format: metricpact/v1
name: dyn
version: 2.0.0
labels:
  - {name: http_route, from: request.route}
  - {name: http_response_status_code, from: response.status_code}
  - {name: k8s_pod_name, from: node.NAME}
  - {name: tenant, from: request.header.x-tenant}
routes:
  unmatched: raw
"""


def v1_labels(route, status="200"):
    return {"http_route": route, "http_response_status_code": status, "k8s_pod_name": POD}


@pytest.fixture
def contracts(workdir):
    """(v1 plugin config, v2 plugin config, v2 stats_config)."""
    v1, _ = compile_contract(write_contract(workdir, V1, "v1.yaml"))
    v2, stats = compile_contract(write_contract(workdir, V2, "v2.yaml"))
    assert '"tenant"' in v2 and '"tenant"' not in v1
    return v1, v2, stats


def atomic_write(path: Path, document: dict):
    """Envoy's file watcher expects a move into place, never a file written where it watches."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(document))
    os.rename(tmp, path)


def series(envoy) -> list:
    return sorted(((s.labels, s.value) for s in envoy.scrape().series(REQUESTS)), key=lambda s: (len(s[0]), repr(s)))


def contract_loaded(envoy, version) -> int:
    return envoy.log_text().count(f"metricpact: contract dyn {version} (")


def await_log(envoy, text, what):
    wait_until(lambda: text in envoy.log_text(), what=what)


def refusals(envoy) -> list:
    return [line for line in envoy.log_text().splitlines() if "metricpact: refusing to start" in line]


def assert_healthy(envoy):
    log = envoy.log_text()
    assert "panicked" not in log and "Uncaught" not in log, log[-3000:]


# ---------------------------------------------------------------- ECDS

class Ecds:
    """The Wasm filter as an ECDS resource in a watched file."""

    def __init__(self, directory: Path, name="metricpact"):
        self.dir = Path(directory) / "ecds"
        self.dir.mkdir(exist_ok=True)
        self.path = self.dir / "metricpact.json"
        self.name = name
        self.version = 0

    def publish(self, typed_config: dict):
        self.version += 1
        atomic_write(self.path, {"version_info": str(self.version), "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": self.name, "typed_config": typed_config}]})

    def publish_filter(self, plugin_config: str, wasm: Path = WASM):
        self.publish(wasm_http_filter(plugin_config, wasm=wasm)["typed_config"])

    def http_filter(self, default_config: dict | None = None) -> dict:
        discovery = {
            "config_source": {
                "path_config_source": {"path": str(self.path), "watched_directory": {"path": str(self.dir)}},
                "resource_api_version": "V3"},
            "type_urls": [WASM_TYPE] + ([default_config["@type"]] if default_config else []),
        }
        if default_config:
            discovery["default_config"] = default_config
        return {"name": self.name, "config_discovery": discovery}

    def counter(self, envoy, which: str) -> int:
        return envoy.stat(f"extension_config_discovery.http_filter.{self.name}.{which}") or 0


def ecds_envoy(workdir, upstream, ecds: Ecds, stats, default_config=None, expect_ready=True) -> Envoy:
    config = bootstrap(listener_port=free_port(), admin_port=free_port(), upstream_port=upstream.port,
                       http_filters=[ecds.http_filter(default_config)], stats_config=stats,
                       node_metadata=ISTIO_NODE_METADATA)
    return Envoy(config, workdir, expect_start=expect_ready)


def test_ecds_update_the_filter_refuses_is_rejected_and_the_running_contract_keeps_counting(workdir, upstream,
                                                                                          contracts):
    v1, v2, stats = contracts
    ecds = Ecds(workdir)
    ecds.publish_filter(v1)
    corrupt = workdir / "corrupt.wasm"
    corrupt.write_bytes(b"\x00asm\x01\x00\x00\x00 this is not a module")
    with ecds_envoy(workdir, upstream, ecds, stats) as envoy:
        assert envoy.request("GET", "/a")[0] == 200
        assert series(envoy) == [(v1_labels("/a"), 1)]
        vms = contract_loaded(envoy, "1.0.0")
        assert vms >= 3  # the main thread's VM and one per worker

        bad_updates = [
            ("{not json", "metricpact: refusing to start: invalid plugin configuration: key must be a string"),
            (v1.replace('"name":"k8s_pod_name"', '"name":"pod"'),
             "metricpact: refusing to start: invalid plugin configuration: labels[2].name: label-conflict"),
            ("", "metricpact: refusing to start: no plugin configuration"),
        ]
        for n, (plugin_config, refusal) in enumerate(bad_updates, start=1):
            ecds.publish_filter(plugin_config)
            wait_until(lambda: ecds.counter(envoy, "update_rejected") == n, what=f"rejection {n}")
            await_log(envoy, refusal, "the filter's refusal")
            rejected = "Filesystem config update rejected: Unable to create Wasm plugin metricpact"
            assert envoy.log_text().count(rejected) == n
            # The previous configuration keeps serving, and counting with its labels.
            assert envoy.request("GET", "/a") == (200, b"ok\n")
            assert series(envoy) == [(v1_labels("/a"), n + 1)]
        assert len(refusals(envoy)) == len(bad_updates)  # one line per refused update

        ecds.publish_filter(v1, wasm=corrupt)  # a module Envoy cannot load: the filter never runs
        wait_until(lambda: ecds.counter(envoy, "update_rejected") == 4, what="rejection of the corrupt module")
        await_log(envoy, "Wasm VM failed Failed to parse corrupted Wasm module", "the load failure")
        assert envoy.request("GET", "/a") == (200, b"ok\n")
        assert series(envoy) == [(v1_labels("/a"), 5)]
        assert contract_loaded(envoy, "1.0.0") == vms  # no VM was restarted by the rejections

        ecds.publish_filter(v2)
        wait_until(lambda: ecds.counter(envoy, "update_success") == 2, what="the valid update")
        wait_until(lambda: contract_loaded(envoy, "2.0.0") == vms, what="v2 loaded in every VM")
        assert envoy.request("GET", "/a", headers={"x-tenant": "acme"}) == (200, b"ok\n")
        assert series(envoy) == [(v1_labels("/a"), 5), ({**v1_labels("/a"), "tenant": "acme"}, 1)]
        expo = envoy.scrape()
        assert expo.value("metricpact_contract_info", metricpact_contract_version="2.0.0") == 1
        assert ecds.counter(envoy, "update_rejected") == 4
    assert_healthy(envoy)


def test_after_an_update_only_the_running_contract_reports_info_1(workdir, upstream, contracts):
    """The replaced configuration's root contexts get proxy_on_done (proxy-wasm-cpp-host
    WasmBase::startShutdown, when Envoy drops the plugin), and the last one of a contract zeroes
    its info series."""
    v1, v2, stats = contracts
    ecds = Ecds(workdir)
    ecds.publish_filter(v1)
    with ecds_envoy(workdir, upstream, ecds, stats) as envoy:
        vms = contract_loaded(envoy, "1.0.0")
        ecds.publish_filter(v2)
        wait_until(lambda: contract_loaded(envoy, "2.0.0") == vms, what="v2 loaded in every VM")

        def info():
            return {s.labels["metricpact_contract_version"]: s.value for s in envoy.scrape().series("metricpact_contract_info")}
        # Envoy drops the old plugin once nothing uses it any more (its streams done).
        wait_until(lambda: info().get("1.0.0", 0) == 0, timeout=15, what=f"v1's info at 0 (have {info()})")
        assert info() == {"1.0.0": 0, "2.0.0": 1}
        assert re.search(r"metricpact: contract dyn 1\.0\.0 \(\w+\) unloaded\n", envoy.log_text())


NOOP_FILTER = {"@type": NOOP_TYPE}  # header_mutation with no mutations: passes everything as is


@pytest.mark.parametrize("default_config", [None, NOOP_FILTER], ids=["no-default", "noop-default"])
def test_a_refused_first_ecds_config_blocks_traffic_unless_a_default_config_is_set(workdir, upstream, contracts,
                                                                                  default_config):
    """No previous configuration to keep: without `default_config`, Envoy answers every request
    on the listener 500 (empty body) until a valid configuration arrives, `FAIL_OPEN`
    notwithstanding; with a no-op `default_config`, requests pass unmeasured."""
    v1, _, stats = contracts
    ecds = Ecds(workdir)
    ecds.publish_filter("{not json")
    with ecds_envoy(workdir, upstream, ecds, stats, default_config=default_config) as envoy:
        assert ecds.counter(envoy, "update_rejected") == 1
        assert len(refusals(envoy)) == 1
        expected = (500, b"") if default_config is None else (200, b"ok\n")
        assert envoy.request("GET", "/a") == expected
        assert envoy.request("POST", "/b", body=b"x") == expected
        assert series(envoy) == []

        ecds.publish_filter(v1)
        wait_until(lambda: ecds.counter(envoy, "update_success") == 1, what="the valid update")
        wait_until(lambda: contract_loaded(envoy, "1.0.0") >= 3, what="v1 loaded in every VM")
        assert envoy.request("GET", "/a") == (200, b"ok\n")
        assert series(envoy) == [(v1_labels("/a"), 1)]
    assert_healthy(envoy)


# ---------------------------------------------------------------- LDS

def test_lds_update_the_filter_refuses_is_rejected_and_the_old_listener_keeps_counting(workdir, upstream, contracts):
    v1, v2, stats = contracts
    config = bootstrap(listener_port=free_port(), admin_port=free_port(), upstream_port=upstream.port,
                       http_filters=[wasm_http_filter(v1)], stats_config=stats, node_metadata=ISTIO_NODE_METADATA)
    listener = config["static_resources"]["listeners"].pop()
    lds_dir = workdir / "lds"
    lds_dir.mkdir()
    lds = lds_dir / "listeners.json"
    versions = iter(range(1, 100))

    def publish(plugin_config):
        patched = json.loads(json.dumps(listener))
        hcm = patched["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"][0] = wasm_http_filter(plugin_config)
        atomic_write(lds, {"version_info": str(next(versions)), "resources": [
            {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **patched}]})

    publish(v1)
    config["dynamic_resources"] = {"lds_config": {
        "path_config_source": {"path": str(lds), "watched_directory": {"path": str(lds_dir)}},
        "resource_api_version": "V3"}}
    envoy = Envoy(config, workdir)
    envoy.port = listener["address"]["socket_address"]["port_value"]
    with envoy:
        assert envoy.request("GET", "/a")[0] == 200
        vms = contract_loaded(envoy, "1.0.0")

        publish("{not json")
        wait_until(lambda: envoy.stat("listener_manager.lds.update_rejected") == 1, what="the rejection")
        await_log(envoy, "lds: listener 'inbound' config rejected: Unable to create Wasm plugin metricpact",
                  "Envoy's rejection")
        assert "invalid plugin configuration: key must be a string" in refusals(envoy)[0]
        assert envoy.request("GET", "/a") == (200, b"ok\n")
        assert series(envoy) == [(v1_labels("/a"), 2)]

        publish(v2)
        wait_until(lambda: envoy.stat("listener_manager.lds.update_success") == 2, what="the valid update")
        wait_until(lambda: contract_loaded(envoy, "2.0.0") == vms, what="v2 loaded in every VM")
        wait_until(lambda: envoy.stat("listener_manager.total_listeners_warming") == 0, what="the listener warmed")
        assert envoy.request("GET", "/a", headers={"x-tenant": "acme"}) == (200, b"ok\n")
        assert series(envoy) == [(v1_labels("/a"), 2), ({**v1_labels("/a"), "tenant": "acme"}, 1)]
        assert envoy.stat("listener_manager.lds.update_rejected") == 1
    assert_healthy(envoy)


# ---------------------------------------------------------------- a VM failing at run time

def trapping_module(max_headers: int = 10) -> bytes:
    """A minimal proxy-wasm module, assembled here byte by byte: it starts and configures like
    any plugin and lets requests through, but traps (`unreachable`) in proxy_on_request_headers
    on a request with more than `max_headers` headers: a VM that fails at run time, on demand."""
    def uleb(n):
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def vec(items):
        return uleb(len(items)) + b"".join(items)

    def section(section_id, payload):
        return bytes([section_id]) + uleb(len(payload)) + payload

    def name(text):
        return uleb(len(text)) + text.encode()

    i32, end = 0x7F, b"\x0b"

    def functype(params, results):
        return b"\x60" + vec([bytes([p]) for p in params]) + vec([bytes([r]) for r in results])

    def const(value):  # i32.const, small non-negative values only
        assert 0 <= value < 64
        return b"\x41" + bytes([value])

    types = [functype([], []), functype([i32], [i32]), functype([i32, i32], []), functype([i32, i32], [i32]),
             functype([i32, i32, i32], [i32]), functype([i32], [])]
    functions = [  # (export name, type, body)
        ("proxy_abi_version_0_2_1", 0, end),
        # A bump allocator: global 0 is the next free byte.
        ("malloc", 1, b"\x23\x00" + b"\x23\x00\x20\x00\x6a\x24\x00" + end),
        ("proxy_on_context_create", 2, end),
        ("proxy_on_vm_start", 3, const(1) + end),
        ("proxy_on_configure", 3, const(1) + end),
        # if (num_headers > max_headers) unreachable; return Continue
        ("proxy_on_request_headers", 4, b"\x20\x01" + const(max_headers) + b"\x4a\x04\x40\x00\x0b" + const(0) + end),
        ("proxy_on_response_headers", 4, const(0) + end),
        ("proxy_on_done", 1, const(1) + end),
        ("proxy_on_log", 5, end),
        ("proxy_on_delete", 5, end),
    ]
    exports = [name("memory") + b"\x02\x00"] + [name(n) + b"\x00" + uleb(i) for i, (n, _, _) in enumerate(functions)]
    return (b"\x00asm\x01\x00\x00\x00"
            + section(1, vec(types))
            + section(3, vec([uleb(t) for _, t, _ in functions]))
            + section(5, vec([b"\x00\x02"]))                                       # memory: 2 pages
            + section(6, vec([bytes([i32, 1]) + b"\x41\x80\x08" + end]))           # mut i32 = 1024
            + section(7, vec(exports))
            + section(10, vec([uleb(len(body) + 1) + b"\x00" + body for _, _, body in functions])))


MANY_HEADERS = {f"x-h{i}": "1" for i in range(20)}


@pytest.mark.parametrize("policy, the_crashing_request, after_the_crash", [
    ("FAIL_OPEN", (503, b""), (200, b"ok\n")),
    ("fail_open", (200, b"ok\n"), (200, b"ok\n")),
    ("FAIL_CLOSED", (503, b""), (503, b"")),
], ids=["failure_policy-FAIL_OPEN", "deprecated-fail_open-true", "failure_policy-FAIL_CLOSED"])
def test_a_vm_failing_at_run_time(workdir, upstream, policy, the_crashing_request, after_the_crash):
    """`failure_policy: FAIL_OPEN` (what metricpact ships): the request in flight when the VM
    traps gets a 503, every later request passes untouched and unmeasured (the filter is
    skipped). Envoy 1.40 decides the in-flight request from the deprecated `fail_open` flag
    only: with `fail_open: true` that request passes too. FAIL_CLOSED: 503 from then on."""
    module = workdir / "trap.wasm"
    module.write_bytes(trapping_module())
    wasm = wasm_http_filter("{}", wasm=module)
    plugin = wasm["typed_config"]["config"]
    del plugin["failure_policy"]
    if policy == "fail_open":
        plugin["fail_open"] = True
    else:
        plugin["failure_policy"] = policy
    config = bootstrap(listener_port=free_port(), admin_port=free_port(), upstream_port=upstream.port,
                       http_filters=[wasm], stats_config={}, node_metadata=ISTIO_NODE_METADATA)
    with Envoy(config, workdir, concurrency=1) as envoy:
        assert envoy.request("GET", "/") == (200, b"ok\n")
        assert envoy.request("GET", "/", headers=MANY_HEADERS) == the_crashing_request  # the VM traps
        await_log(envoy, "Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable",
                  "the trap in the log")
        for headers in ({}, MANY_HEADERS, {}):
            assert envoy.request("POST", "/", headers=headers, body=b"x") == after_the_crash
    assert envoy.log_text().count("Uncaught RuntimeError") == 1


def test_trapping_module_is_a_working_plugin_until_it_traps(workdir, upstream):
    """The control for the test above: below the header threshold the module never fails."""
    module = workdir / "trap.wasm"
    module.write_bytes(trapping_module())
    config = bootstrap(listener_port=free_port(), admin_port=free_port(), upstream_port=upstream.port,
                       http_filters=[wasm_http_filter("{}", wasm=module)], stats_config={},
                       node_metadata=ISTIO_NODE_METADATA)
    with Envoy(config, workdir, concurrency=1) as envoy:
        for _ in range(5):
            assert envoy.request("GET", "/", headers={"x-a": "1"}) == (200, b"ok\n")
    assert "Uncaught" not in envoy.log_text()
