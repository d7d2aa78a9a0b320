"""Real-process harness for metricpact: compiles contracts with the real CLI, runs the real
metricpact.wasm inside a real Envoy on free 127.0.0.1 ports in front of an upstream the test
controls, and scrapes Envoy's /stats/prometheus. Every process started here is stopped again."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import shutil
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WASM = Path(os.environ.get("METRICPACT_WASM", ROOT / "target/wasm32-wasip1/release/metricpact.wasm"))
CLI = Path(os.environ.get("METRICPACT_BIN", ROOT / "target/release/metricpact"))
ENVOY = Path(os.environ.get("ENVOY_BIN", ROOT / ".venv/bin/envoy"))
# Resolved from PATH, as tests/setup.sh checks for them (it installs Debian's prometheus package).
PROMETHEUS = Path(shutil.which("prometheus") or "prometheus")
PROMTOOL = Path(shutil.which("promtool") or "promtool")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=10.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# ---------------------------------------------------------------- contracts (the real CLI)

def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise RuntimeError(f"metricpact {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def compile_contract(path: Path | str) -> tuple[str, dict]:
    """Returns (plugin configuration JSON, Envoy stats_config) for a contract file."""
    config = run_cli("compile", str(path)).stdout.strip()
    stats = json.loads(run_cli("envoy-stats", str(path)).stdout)
    return config, stats


def write_contract(directory: Path, text: str, name: str = "contract.yaml") -> Path:
    path = Path(directory) / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- the upstream

class _UpstreamHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one write would be as fast; two must not wait for a delayed ACK

    def _serve(self):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        delay_ms = int(query.get("delay_ms", ["0"])[0])
        status = int(query.get("status", ["200"])[0])
        if delay_ms:
            time.sleep(delay_ms / 1000)
        body = b"ok\n"
        self.send_response(status)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

    def __getattr__(self, name):  # any other method (BREW, PURGE, ...) is served the same way
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def log_message(self, *args):
        pass


class _ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class LocalHTTPServer:
    """A threaded HTTP server on 127.0.0.1, on a free port, answering with `handler`;
    `with` starts and stops it."""

    def __init__(self, handler):
        self.server = _ThreadingServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class RawTcpServer:
    """A raw TCP server on 127.0.0.1 (a free port) for upstreams that misbehave below HTTP: each
    connection is handed to `serve(conn)` on its own thread; `with` starts it and always stops it
    (closing the listener wakes the blocked accept)."""

    # Socket timeout of each accepted connection (None: blocking).
    connection_timeout: float | None = None

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def serve(self, conn: socket.socket):
        raise NotImplementedError

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self.thread.join(timeout=5)

    def _accept(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            conn.settimeout(self.connection_timeout)
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()


class Upstream(LocalHTTPServer):
    """An HTTP server on 127.0.0.1: `?status=N` answers N, `?delay_ms=N` waits N ms first."""

    def __init__(self):
        super().__init__(_UpstreamHandler)


# ---------------------------------------------------------------- Envoy

ISTIO_NODE_METADATA = {
    "NAME": "cart-7d9f8b6c5-x2x8k",
    "NAMESPACE": "shop",
    "WORKLOAD_NAME": "cart",
    "CLUSTER_ID": "Kubernetes",
    "LABELS": {"app": "cart", "service.istio.io/canonical-name": "cart", "version": "v1"},
}


@dataclass
class Route:
    """A route of the listener: `prefix` to the upstream, a dead cluster, or a timeout; with
    `direct`, Envoy itself answers that status with the body `ok\\n` (no upstream)."""
    prefix: str
    cluster: str = "app"
    timeout: str = "15s"
    direct: int | None = None

    def envoy(self) -> dict:
        if self.direct is not None:
            return {"match": {"prefix": self.prefix},
                    "direct_response": {"status": self.direct, "body": {"inline_string": "ok\n"}}}
        return {"match": {"prefix": self.prefix}, "route": {"cluster": self.cluster, "timeout": self.timeout}}


def wasm_http_filter(plugin_config: str, wasm: Path = WASM, name: str = "metricpact") -> dict:
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "failure_policy": "FAIL_OPEN",
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin_config},
                "vm_config": {
                    "vm_id": name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm)}},
                },
            },
        },
    }


def bootstrap(*, listener_port, admin_port, upstream_port, http_filters, stats_config, node_metadata, routes=None):
    routes = routes or [Route("/")]
    dead_port = free_port()  # nothing listens there: connection failures
    return {
        "node": {"id": f"sidecar~127.0.0.1~{node_metadata.get('NAME', 'pod')}.{node_metadata.get('NAMESPACE', 'ns')}~cluster.local",
                 "cluster": "metricpact-test", "metadata": node_metadata},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "stats_flush_interval": "1s",
        "stats_config": stats_config,
        "static_resources": {
            "listeners": [{
                "name": "inbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "inbound",
                        "codec_type": "AUTO",
                        "route_config": {"virtual_hosts": [{
                            "name": "app", "domains": ["*"],
                            "routes": [r.envoy() for r in routes],
                        }]},
                        "http_filters": [*http_filters, {
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                        }],
                    },
                }]}],
            }],
            "clusters": [
                _cluster("app", upstream_port),
                _cluster("dead", dead_port),
            ],
        },
    }


def _cluster(name, port):
    return {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }


class Envoy:
    """A real Envoy process with a given bootstrap; `with Envoy(...) as e:` starts and stops it."""

    # Seconds to become ready, to answer an admin request while starting, and to exit when asked.
    start_timeout = 30
    ready_poll_interval = 0.05
    ready_request_timeout = 10
    stop_timeout = 10

    def __init__(self, config: dict, workdir: Path, concurrency: int = 2, expect_start: bool = True):
        self.config = config
        self.workdir = Path(workdir)
        self.concurrency = concurrency
        self.expect_start = expect_start
        self.admin_port = config["admin"]["address"]["socket_address"]["port_value"]
        listeners = config["static_resources"]["listeners"]
        self.port = listeners[0]["address"]["socket_address"]["port_value"] if listeners else None
        self.proc = None
        self.log_path = self.workdir / f"envoy-{self.admin_port}.log"

    def argv(self, config_path: Path) -> list:
        """The command line (subclasses run Envoy under another tool)."""
        return [str(ENVOY), "-c", str(config_path), "--concurrency", str(self.concurrency), "--disable-hot-restart",
                "--log-level", "info", "--log-format", "[%l][%n] %v"]

    def start(self):
        path = self.workdir / f"envoy-{self.admin_port}.json"
        path.write_text(json.dumps(self.config))
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.argv(path), stdout=self.log, stderr=subprocess.STDOUT)
        if self.expect_start:
            wait_until(self._ready, timeout=self.start_timeout, interval=self.ready_poll_interval,
                       what=f"envoy on admin port {self.admin_port} (log: {self.log_path})")
        return self

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"envoy exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
        try:
            return http_get(self.admin_port, "/ready", timeout=self.ready_request_timeout)[0] == 200
        except OSError:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def scrape_text(self) -> str:
        status, body = http_get(self.admin_port, "/stats/prometheus")
        assert status == 200, body
        return body.decode()

    def scrape(self) -> "Exposition":
        return Exposition.parse(self.scrape_text())

    def request(self, method="GET", path="/", headers=None, body=None, timeout=30):
        return http_request(self.port, method, path, headers=headers, body=body, timeout=timeout)

    def stats(self, pattern: str) -> dict:
        """Envoy's own counters and gauges whose name matches the regex `pattern` (admin /stats),
        as {name: int}; histograms and text-valued stats are left out."""
        status, body = http_get(self.admin_port, "/stats?filter=" + urllib.parse.quote(pattern))
        assert status == 200, body
        out = {}
        for line in body.decode().splitlines():
            name, _, value = line.partition(": ")
            if value.lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def stat(self, name: str) -> int | None:
        return self.stats("^" + re.escape(name) + "$").get(name)


def sidecar(workdir: Path, contract: Path | str, upstream_port: int, *, node_metadata=None, routes=None,
            concurrency=2, stats_config=None, filtered=True) -> Envoy:
    """An Envoy configured as metricpact expects: the filter before the router, the contract's
    stats tags and buckets in the bootstrap. `filtered=False` gives the same Envoy without the
    filter: the baseline a test compares client-visible behaviour with."""
    plugin_config, stats = compile_contract(contract)
    config = bootstrap(
        listener_port=free_port(), admin_port=free_port(), upstream_port=upstream_port,
        http_filters=[wasm_http_filter(plugin_config)] if filtered else [],
        stats_config=stats if stats_config is None else stats_config,
        node_metadata=ISTIO_NODE_METADATA if node_metadata is None else node_metadata,
        routes=routes)
    return Envoy(config, workdir, concurrency=concurrency)


# ---------------------------------------------------------------- HTTP clients

def http_get(port, path, timeout=10):
    return http_request(port, "GET", path, timeout=timeout)


def http_request(port, method="GET", path="/", headers=None, body=None, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def raw_request(port, data: bytes, timeout=10) -> bytes:
    """Sends bytes as they are (for requests http.client refuses to build)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def raw_exchange(port, data: bytes, timeout=10, until_response=False) -> tuple[bytes, str]:
    """Sends bytes as they are and reads until the peer closes: (everything received, how it
    ended: "eof", "reset" or "timeout"). Send `Connection: close` to get "eof" after a response.
    With `until_response`, stops as soon as one whole response (Content-Length or chunked) is in:
    "complete". (After a request its codec rejects, Envoy waits its delayed_close_timeout, 1 s,
    before closing.)"""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        received = b""
        while True:
            if until_response and _complete_response(received):
                return received, "complete"
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return received, "timeout"
            except ConnectionResetError:
                return received, "reset"
            if not chunk:
                return received, "eof"
            received += chunk


def _complete_response(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = re.search(rb"(?im)^content-length: *(\d+)\r?$", head)
    if length:
        return len(body) >= int(length.group(1))
    if re.search(rb"(?im)^transfer-encoding: *chunked\r?$", head):
        return body.endswith(b"0\r\n\r\n")
    return False


_VOLATILE = re.compile(rb"(?im)^(date|x-envoy-upstream-service-time): [^\r\n]*\r\n")


def without_volatile_headers(response: bytes) -> bytes:
    """A raw HTTP/1.1 response without the headers whose values change from one response to
    the next (`date`, `x-envoy-upstream-service-time`): what two Envoys answering the same
    request must then agree on byte for byte."""
    head, sep, body = response.partition(b"\r\n\r\n")
    return _VOLATILE.sub(b"", head + b"\r\n") + sep[2:] + body if sep else response


# ---------------------------------------------------------------- Prometheus text

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def _unescape(value: str) -> str:
    return re.sub(r'\\(.)', lambda m: {"n": "\n", "\\": "\\", '"': '"'}.get(m.group(1), "\\" + m.group(1)), value)


def parse_labels(text: str) -> dict:
    labels, pos = {}, 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if not m:
            raise ValueError(f"bad label set: {text!r} at {pos}")
        labels[m.group(1)] = _unescape(m.group(2))
        pos = m.end()
    return labels


@dataclass
class Sample:
    name: str
    labels: dict
    value: float


@dataclass
class Exposition:
    samples: list = field(default_factory=list)
    types: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "Exposition":
        expo = cls()
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(None, 3)
                expo.types[name] = kind
                continue
            if line.startswith("#"):
                continue
            m = _SAMPLE.match(line)
            if not m:
                raise ValueError(f"unparsable exposition line: {line!r}")
            expo.samples.append(Sample(m.group(1), parse_labels(m.group(3) or ""), float(m.group(4))))
        return expo

    def series(self, name: str) -> list:
        return [s for s in self.samples if s.name == name]

    def value(self, name: str, **labels) -> float | None:
        """The one sample of `name` whose labels include `labels` (None if there is none)."""
        found = [s for s in self.series(name) if all(s.labels.get(k) == v for k, v in labels.items())]
        if len(found) > 1:
            raise AssertionError(f"{len(found)} series of {name} match {labels}: {[s.labels for s in found]}")
        return found[0].value if found else None

    def total(self, name: str, **labels) -> float:
        return sum(s.value for s in self.series(name) if all(s.labels.get(k) == v for k, v in labels.items()))

    def buckets(self, name: str, **labels) -> dict:
        """Cumulative bucket counts of one histogram series, by `le`."""
        out = {}
        for s in self.series(f"{name}_bucket"):
            if all(s.labels.get(k) == v for k, v in labels.items()):
                out[s.labels["le"]] = out.get(s.labels["le"], 0) + s.value
        return out
