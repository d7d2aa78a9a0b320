"""Shared pieces of `make bench` (tests/bench/bench.py and its sections): Envoys pinned to a core,
a cheap direct-response upstream, wrk runs and their parsing, /proc readings, the machine's
description, medians. Every process started here is stopped by its caller's `with` block."""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "envoy"))
import harness  # noqa: E402,F401  (re-exported for the sections)

ROOT = harness.ROOT
BENCH = Path(__file__).resolve().parent


def _terminated(signum, _frame):
    raise SystemExit(128 + signum)


# A SIGTERM (`kill`, a CI timeout) unwinds like Ctrl-C, through every `with`/`finally` that stops
# the Envoys a section started; by default Python would die on the spot and leave them running.
signal.signal(signal.SIGTERM, _terminated)
LUA = BENCH / "lua"
EMPTY_WASM = Path(os.environ.get(
    "METRICPACT_EMPTY_WASM",
    ROOT / "target/bench-empty-filter/wasm32-wasip1/release/metricpact_bench_empty_filter.wasm"))
HOSTCALL_WASM = Path(os.environ.get(
    "METRICPACT_HOSTCALL_WASM",
    ROOT / "target/bench-hostcall-filter/wasm32-wasip1/release/metricpact_bench_hostcall_filter.wasm"))
TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- cores

@dataclass
class Cores:
    """Envoy under test on `envoy`; wrk and the upstream on `load`. None: not pinned (1 CPU)."""
    envoy: int | None
    load: int | None

    @classmethod
    def choose(cls, spec: str | None = None) -> "Cores":
        if spec:
            envoy, load = (int(c) for c in spec.split(","))
            return cls(envoy, load)
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) < 2:
            return cls(None, None)
        return cls(allowed[0], allowed[1])

    def describe(self) -> str:
        if self.envoy is None:
            return "not pinned (fewer than 2 CPUs)"
        return f"Envoy under test on CPU {self.envoy}; wrk and the upstream Envoy on CPU {self.load}"


def pin(pid: int, core: int | None):
    """Pins every thread of a running process (Envoy's workers exist once it is ready)."""
    if core is not None:
        subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(pid)], check=True,
                       stdout=subprocess.DEVNULL)


def on_core(core: int | None) -> list:
    return ["taskset", "-c", str(core)] if core is not None else []


# ---------------------------------------------------------------- /proc

def cpu_seconds(pid: int) -> float:
    """user + system CPU time of the whole process (all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) * 1024


# ---------------------------------------------------------------- Envoy

def started(stack, config: dict, workdir: Path, core: int | None, concurrency: int = 1) -> "harness.Envoy":
    """Starts an Envoy (entered on `stack`, so it is stopped with it) and pins it to `core`."""
    envoy = stack.enter_context(harness.Envoy(config, workdir, concurrency=concurrency))
    pin(envoy.proc.pid, core)
    return envoy


def proxy_config(upstream_port: int, http_filters: list, stats_config: dict, *, buffer_limit: int | None = None,
                 node_metadata: dict | None = None) -> dict:
    """A sidecar-like Envoy: one listener, every path proxied to the upstream cluster `app`."""
    config = harness.bootstrap(listener_port=harness.free_port(), admin_port=harness.free_port(),
                               upstream_port=upstream_port, http_filters=http_filters, stats_config=stats_config,
                               node_metadata=harness.ISTIO_NODE_METADATA if node_metadata is None else node_metadata)
    config["stats_flush_interval"] = "5s"   # Envoy's default (the test harness uses 1 s)
    if buffer_limit:
        config["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = buffer_limit
        for cluster in config["static_resources"]["clusters"]:
            cluster["per_connection_buffer_limit_bytes"] = buffer_limit
    return config


def upstream_config(routes: list, *, max_body: int | None = None, buffer_limit: int | None = None) -> dict:
    """A cheap upstream: an Envoy answering every request itself with `direct_response` routes."""
    config = harness.bootstrap(listener_port=harness.free_port(), admin_port=harness.free_port(),
                               upstream_port=harness.free_port(), http_filters=[], stats_config={},
                               node_metadata={"NAME": "upstream", "NAMESPACE": "bench"})
    config["stats_flush_interval"] = "5s"
    config["static_resources"]["clusters"] = []
    listener = config["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["virtual_hosts"][0]["routes"] = routes
    if max_body:
        hcm["route_config"]["max_direct_response_body_size_bytes"] = max_body
    if buffer_limit:
        listener["per_connection_buffer_limit_bytes"] = buffer_limit
    return config


def direct(status: int, *, body: dict | None = None, prefix: str = "/", path: str | None = None,
           header: tuple | None = None, content_type: str | None = None) -> dict:
    match = {"path": path} if path else {"prefix": prefix}
    if header:
        match["headers"] = [{"name": header[0], "string_match": {"exact": header[1]}}]
    route = {"match": match, "direct_response": {"status": status, "body": body or {"inline_string": "ok\n"}}}
    if content_type:
        route["response_headers_to_add"] = [{"header": {"key": "content-type", "value": content_type},
                                             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    return route


def envoy_version() -> str:
    out = subprocess.run([str(harness.ENVOY), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version: \S+?/([\d.]+)/\S+?/(\S+?)/(\S+)", out)
    return f"{m.group(1)} ({m.group(2).lower()}, {m.group(3)})" if m else out.strip().splitlines()[-1]


# ---------------------------------------------------------------- wrk

@dataclass
class WrkResult:
    requests: int
    seconds: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    output: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str, out: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if m is None:
        raise RuntimeError(f"cannot parse the time {text!r} in wrk's output:\n{out}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def wrk(url: str, *, seconds: float, connections: int, core: int | None, script: Path | None = None,
        headers: tuple = (), script_args: tuple = (), timeout_s: int = 10, allow_non2xx: bool = False,
        until=None, poll_s: float = 0.5) -> WrkResult:
    """One wrk run (1 thread, `connections` connections, latency distribution) pinned to `core`;
    wrk takes whole seconds. With `until` (a callable polled every `poll_s`), wrk is interrupted
    (SIGINT: it stops and prints its results) as soon as `until()` is true; wrk's own main thread
    otherwise sleeps for the whole duration even when the script stops its thread."""
    argv = [*on_core(core), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
            f"--timeout={timeout_s}s"]
    for h in headers:
        argv += ["-H", h]
    if script:
        argv += ["-s", str(script)]
    argv.append(url)
    if script_args:
        argv += ["--", *map(str, script_args)]
    if until is None:
        res = subprocess.run(argv, capture_output=True, text=True)
        returncode, out, err = res.returncode, res.stdout, res.stderr
    else:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while proc.poll() is None:
                time.sleep(poll_s)
                if until():
                    proc.send_signal(signal.SIGINT)
                    break
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        returncode = proc.returncode
    if returncode != 0 or "requests in" not in out:
        raise RuntimeError(f"wrk failed ({returncode}): {shlex.join(argv)}\n{out}\n{err}")
    return _parse_wrk(out, argv, allow_non2xx)


def _parse_wrk(out: str, argv: list, allow_non2xx: bool) -> WrkResult:
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    requests, elapsed = int(m.group(1)), _ms(m.group(2) + m.group(3), out) / 1e3
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors and any(int(g) for g in errors.groups()):
        raise RuntimeError(f"wrk saw socket errors: {shlex.join(argv)}\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(non2xx.group(1)) if non2xx else 0
    if non2xx and not allow_non2xx:
        raise RuntimeError(f"wrk saw {non2xx} non-2xx responses: {shlex.join(argv)}\n{out}")
    mean = _ms(re.search(r"Latency\s+(\S+)", out).group(1), out)
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, re.M).group(1), out)
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1), out)
    return WrkResult(requests, elapsed, mean, p50, p99, non2xx, out)


def cpu_per_request(envoy, *, seconds: float, connections: int, core: int | None, script: Path) -> tuple:
    """One wrk run against `envoy`'s listener: (Envoy's CPU µs per completed request, the WrkResult).
    CPU is the process's user+system time (all threads) over the run."""
    before = cpu_seconds(envoy.proc.pid)
    res = wrk(f"http://127.0.0.1:{envoy.port}/", seconds=seconds, connections=connections, core=core, script=script,
              allow_non2xx=True)
    return (cpu_seconds(envoy.proc.pid) - before) / res.requests * 1e6, res


def admin_counter(envoy, name: str) -> int:
    """One counter from Envoy's admin /stats (0 when it does not exist yet)."""
    status, body = harness.http_get(envoy.admin_port, f"/stats?filter=^{re.escape(name)}$", timeout=10)
    m = re.search(rf"^{re.escape(name)}: (\d+)$", body.decode(), re.M)
    return int(m.group(1)) if status == 200 and m else 0


# ---------------------------------------------------------------- statistics and the machine

def median(values) -> float:
    return statistics.median(list(values))


def rotated(items: list, r: int) -> list:
    """Round r's order: each variant takes each position equally often, so drift within a round
    does not always favour the same one."""
    k = r % len(items)
    return items[k:] + items[:k]


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "mhz": float(mhz.group(1)) if mhz else None,
        "nproc": int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or os.cpu_count()),
        "mem_gib": int(mem.group(1)) / 1048576 if mem else None,
        "kernel": platform.release(),
        "envoy": envoy_version(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def cargo_argv() -> list:
    """How to run cargo: $CARGO (e.g. `flock /tmp/lock nice -n 10 cargo`), else `cargo`."""
    return shlex.split(os.environ.get("CARGO") or "cargo")


def dump(path: Path, data: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
