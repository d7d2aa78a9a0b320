"""Soak: at least 1,000,000 random requests through one Envoy (2 workers) running metricpact.wasm
with tests/soak/contract.yaml, in front of a second Envoy that answers by path prefix (/s200/...,
/s404/..., /s503/...: direct responses, so the upstream is cheap).

wrk (a Lua script) sends random methods, 100,000 distinct paths in three shapes (two route
templates and raw paths), random tenant header values (some trying to forge tags, some absent)
and so random status codes, while a scraper reads /stats/prometheus every 2 s. Asserted:

  - Envoy never restarts: same PID throughout, server.uptime never goes back,
    server.hot_restart_epoch stays 0;
  - no Wasm panic, trap, VM failure, nor any wasm log line above info in Envoy's log;
  - every request Envoy handled was counted: sum of http_server_requests_total ==
    http.inbound.downstream_rq_total;
  - each metricpact metric has at most max_series (+1 overflow) series, and the filter's
    bookkeeping metrics stay a handful;
  - Envoy's RSS (VmRSS) grows by at most 5 MB from the end of the warm-up to the end.

Prints requests sent, req/s, series counts, RSS at warm-up and end and the growth,
metricpact_vm_memory_bytes when the filter exports it, and the number of Envoy stats. Exits
non-zero on any failed assertion. Every process it starts is stopped again.

usage: python tests/soak/soak.py [--requests N] [--warmup N] [--connections N] [--chunk-seconds S]
                                 [--max-rss-growth-mb MB] [--pin]
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "envoy"))
import harness  # noqa: E402

CONTRACT = HERE / "contract.yaml"
STATUS_CODES = [200, 201, 302, 400, 404, 429, 500, 503]
DISTINCT_PATHS = 100_000
METRICS = {"requests": "http_server_requests_total", "duration": "http_server_request_duration_milliseconds_count",
           "active": "http_server_active_requests"}
BOOKKEEPING_PREFIX = "metricpact_"

LUA = r"""
-- Random requests for the metricpact soak, built once per wrk run (so the load generator stays
-- cheap): one request for each of 100,000 ids, in three path shapes, with a random method, a
-- random status code (the path prefix), and a tenant header that is random, hostile or absent.
local methods = {"GET", "GET", "GET", "GET", "GET", "POST", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"}
local codes = {@CODES@}
local hostile = {"x;.;k8s_pod_name=.=evil;.;", "=.=http_server_requests_total.evil", "a\"b\\c\"} 1",
                 "caf\195\169", "\255\254", "{{id}}", "t1"}
local requests = {}
local n = 0

function init(args)
  math.randomseed(os.time())
  for id = 0, @DISTINCT@ - 1 do
    local code = codes[math.random(#codes)]
    local shape = math.random(10)
    local path
    if shape <= 4 then
      path = "/s" .. code .. "/users/" .. id
    elseif shape <= 6 then
      path = "/s" .. code .. "/static/" .. id .. ".css"
    else
      path = "/s" .. code .. "/p/" .. id .. "?q=" .. math.random(1000000)
    end
    local headers = {}
    local t = math.random(10)
    if t <= 7 then
      headers["x-tenant"] = "t" .. math.random(5000)
    elseif t <= 8 then
      headers["x-tenant"] = hostile[math.random(#hostile)]
    end
    local method = methods[math.random(#methods)]
    local body = nil
    if method == "POST" or method == "PUT" or method == "PATCH" then
      body = "{\"id\":" .. id .. "}"
      headers["content-type"] = "application/json"
    end
    requests[id + 1] = wrk.format(method, path, headers, body)
  end
  n = math.random(#requests)
end

function request()
  n = n % #requests + 1
  return requests[n]
end
"""


class Failed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failed(message)
    print(f"  ok: {message}")


def rss_kb(pid) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise Failed(f"no VmRSS for pid {pid}")


def upstream_config() -> dict:
    routes = [harness.Route(f"/s{code}/", direct=code) for code in STATUS_CODES] + [harness.Route("/", direct=404)]
    return harness.bootstrap(listener_port=harness.free_port(), admin_port=harness.free_port(),
                             upstream_port=harness.free_port(), http_filters=[], stats_config={},
                             node_metadata={}, routes=routes)


def sidecar_config(plugin_config, stats, upstream_port) -> dict:
    return harness.bootstrap(listener_port=harness.free_port(), admin_port=harness.free_port(),
                             upstream_port=upstream_port, http_filters=[harness.wasm_http_filter(plugin_config)],
                             stats_config=stats, node_metadata=harness.ISTIO_NODE_METADATA)


class Watch:
    """Envoy's identity and uptime, sampled between and during load: it must never restart."""

    def __init__(self, envoy):
        self.envoy = envoy
        self.pid = envoy.proc.pid
        self.uptime = -1
        self.samples = 0

    def sample(self):
        if self.envoy.proc.poll() is not None:
            raise Failed(f"Envoy exited with {self.envoy.proc.returncode}")
        stats = self.envoy.stats(r"^server\.(uptime|hot_restart_epoch|state)$")
        if self.envoy.proc.pid != self.pid:
            raise Failed("Envoy's PID changed")
        if stats["server.uptime"] < self.uptime:
            raise Failed(f"server.uptime went back: {self.uptime} -> {stats['server.uptime']}")
        if stats["server.hot_restart_epoch"] != 0:
            raise Failed(f"server.hot_restart_epoch is {stats['server.hot_restart_epoch']}")
        self.uptime = stats["server.uptime"]
        self.samples += 1


class Scraper(threading.Thread):
    """Scrapes /stats/prometheus every `interval` seconds while the load runs, as Prometheus would."""

    def __init__(self, envoy, watch, interval=2.0):
        super().__init__(daemon=True)
        self.envoy, self.watch, self.interval = envoy, watch, interval
        self.stop = threading.Event()
        self.scrapes = 0
        self.error = None

    def run(self):
        while not self.stop.wait(self.interval):
            try:
                harness.Exposition.parse(self.envoy.scrape_text())
                self.watch.sample()
                self.scrapes += 1
            except Exception as e:  # reported by the main thread
                self.error = e
                return


def run_wrk(port, seconds, connections, script, cpu) -> int:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script),
           f"http://127.0.0.1:{port}"]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise Failed(f"wrk failed ({out.returncode}): {out.stderr}")
    m = re.search(r"(\d+) requests in", out.stdout)
    if not m:
        raise Failed(f"unexpected wrk output:\n{out.stdout}")
    errors = re.search(r"Socket errors: (.*)", out.stdout)
    if errors and re.search(r"timeout [1-9]|read [1-9]|write [1-9]|connect [1-9]", errors.group(1)):
        raise Failed(f"wrk socket errors: {errors.group(1)}")
    return int(m.group(1))


def load(envoy, watch, target, args, script, wrk_cpu, label) -> tuple:
    """wrk chunks until `target` more requests were completed; returns (requests, seconds)."""
    done, started = 0, time.monotonic()
    while done < target:
        done += run_wrk(envoy.port, args.chunk_seconds, args.connections, script, wrk_cpu)
        watch.sample()
        elapsed = time.monotonic() - started
        print(f"  {label}: {done:,} requests, {done / elapsed:,.0f} req/s, RSS {rss_kb(envoy.proc.pid) / 1024:.1f} MB",
              flush=True)
    return done, time.monotonic() - started


def series_counts(expo, static: set) -> dict:
    """metric -> (admitted series, overflow series). An overflow series has `_OTHER` for every
    traffic label it carries (labels absent from a request stay absent, so there is one overflow
    series per pattern of absent labels); the pod's own labels (`static`) are kept."""
    counts = {}
    for key, name in METRICS.items():
        admitted, overflow = set(), set()
        for s in expo.series(name):
            traffic = [v for k, v in s.labels.items() if k not in static]
            (overflow if traffic and all(v == "_OTHER" for v in traffic) else admitted).add(
                tuple(sorted(s.labels.items())))
        counts[key] = (len(admitted), len(overflow))
    return counts


def bookkeeping(expo) -> dict:
    out = {}
    for s in expo.samples:
        if s.name.startswith(BOOKKEEPING_PREFIX):
            out[s.name] = out.get(s.name, 0) + 1
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000, help="total requests, at least")
    parser.add_argument("--warmup", type=int, default=150_000, help="requests before the RSS baseline")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--chunk-seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--max-rss-growth-mb", type=float, default=5.0)
    parser.add_argument("--pin", action="store_true",
                        help="pin the sidecar to CPU 0, the upstream Envoy and wrk to CPU 1 (on a quiet machine; on a "
                             "shared one it only takes CPU away from the sidecar)")
    args = parser.parse_args()

    plugin_config, stats = harness.compile_contract(CONTRACT)
    compiled = json.loads(plugin_config)
    max_series = compiled["max_series"]
    labels = len(compiled["labels"])
    static = {l["name"] for l in compiled["labels"] if all(src["kind"] == "node" for src in l["sources"])}
    traffic_labels = labels - len(static)
    pin = args.pin and (os.cpu_count() or 1) >= 2
    # The sidecar on CPU 0 (both workers), the upstream Envoy and wrk on CPU 1.
    sidecar_cpu, load_cpu = (0, 1) if pin else (None, None)

    with tempfile.TemporaryDirectory(prefix="metricpact-soak-") as tmp:
        workdir = Path(tmp)
        script = workdir / "soak.lua"
        script.write_text(LUA.replace("@CODES@", ", ".join(f'"{c}"' for c in STATUS_CODES))
                          .replace("@DISTINCT@", str(DISTINCT_PATHS)))
        upstream = harness.Envoy(upstream_config(), workdir, concurrency=1)
        with upstream:
            envoy = harness.Envoy(sidecar_config(plugin_config, stats, upstream.port), workdir, concurrency=2)
            with envoy:
                if pin:
                    for pid, cpu in ((envoy.proc.pid, sidecar_cpu), (upstream.proc.pid, load_cpu)):
                        subprocess.run(["taskset", "-a", "-cp", str(cpu), str(pid)], check=True, capture_output=True)
                print(f"soak: sidecar pid {envoy.proc.pid} (2 workers{', CPU 0' if pin else ''}), upstream pid "
                      f"{upstream.proc.pid}{', wrk and upstream on CPU 1' if pin else ''}; contract {CONTRACT.name}: "
                      f"max_series {max_series}, {labels} labels", flush=True)
                watch = Watch(envoy)
                watch.sample()
                scraper = Scraper(envoy, watch)
                scraper.start()
                try:
                    warm, warm_s = load(envoy, watch, args.warmup, args, script, load_cpu, "warm-up")
                    time.sleep(1.5)  # a stats flush, so warm-up histograms are allocated too
                    rss_warm = rss_kb(envoy.proc.pid)
                    main_n, main_s = load(envoy, watch, args.requests - warm, args, script, load_cpu, "soak")
                finally:
                    scraper.stop.set()
                    scraper.join()
                if scraper.error:
                    raise Failed(f"scrape during load failed: {scraper.error!r}")
                time.sleep(2)  # streams finish, histograms flush
                watch.sample()
                rss_end = rss_kb(envoy.proc.pid)
                expo = harness.Exposition.parse(envoy.scrape_text())
                handled = envoy.stat("http.inbound.downstream_rq_total")
                stat_lines = harness.http_get(envoy.admin_port, "/stats")[1].decode().splitlines()
                wasm_stats = [line for line in stat_lines if line.startswith("wasmcustom.")]
                log = envoy.log_text()

        sent = warm + main_n
        counts = series_counts(expo, static)
        books = bookkeeping(expo)
        counted = expo.total(METRICS["requests"])
        growth_mb = (rss_end - rss_warm) / 1024
        vm_memory = expo.series("metricpact_vm_memory_bytes")

        print("\nsoak figures")
        print(f"  requests sent (wrk, completed)  {sent:,}")
        print(f"  requests Envoy handled          {handled:,}   metricpact counted {counted:,.0f}")
        print(f"  throughput                      {sent / (warm_s + main_s):,.0f} req/s over {warm_s + main_s:.0f} s")
        print(f"  series (max_series {max_series})         " + ", ".join(
            f"{key} {admitted} + {overflow} overflow" for key, (admitted, overflow) in counts.items()))
        print(f"  bookkeeping series              {sum(books.values())} {books}")
        print(f"  metricpact stats (wasmcustom.*) {len(wasm_stats)}   Envoy stats in all {len(stat_lines)}")
        print(f"  Envoy RSS                       warm-up {rss_warm / 1024:.1f} MB, end {rss_end / 1024:.1f} MB, "
              f"growth {growth_mb:+.2f} MB")
        if vm_memory:
            for s in vm_memory:
                print(f"  metricpact_vm_memory_bytes      {s.value:,.0f} {s.labels or ''}")
        else:
            print("  metricpact_vm_memory_bytes      (not exported by this build)")
        print(f"  uptime samples                  {watch.samples}, scrapes during load {scraper.scrapes}")

        print("\nassertions")
        check(sent >= args.requests, f"at least {args.requests:,} requests were sent ({sent:,})")
        check(watch.samples > 2,
              f"Envoy kept PID {watch.pid}, uptime never went back, hot_restart_epoch 0 ({watch.samples} samples)")
        bad = [line for line in log.splitlines()
               if re.search(r"panicked|Uncaught|VM failed|failed to load|\[critical\]", line)
               or ("wasm log" in line and not line.startswith("[info]"))]
        check(not bad, "no Wasm panic, trap, VM failure or wasm error line in Envoy's log"
              + (f": {bad[:5]}" if bad else ""))
        check(counted == handled, f"every request Envoy handled was counted ({counted:,.0f} == {handled:,})")
        for key, (admitted, overflow) in counts.items():
            check(admitted <= max_series and overflow <= 2 ** traffic_labels,
                  f"{METRICS[key]}: {admitted} series <= max_series {max_series}, "
                  f"+ {overflow} overflow series (one per pattern of absent labels)")
        check(books.get("metricpact_contract_info") == 1
              and books.get("metricpact_label_overflow_total", 0) <= labels
              and books.get("metricpact_series_overflow_total", 0) <= 2
              and sum(books.values()) <= labels + 12,
              f"the filter's bookkeeping stays small ({sum(books.values())} series)")
        traffic_stats = len([line for line in wasm_stats if not line.startswith("wasmcustom." + BOOKKEEPING_PREFIX)])
        bound = sum(admitted + overflow for admitted, overflow in counts.values())
        check(traffic_stats == bound,
              f"metricpact traffic stats: {traffic_stats}, exactly the series above (nothing flattened or stray)")
        check(growth_mb <= args.max_rss_growth_mb,
              f"Envoy RSS grew {growth_mb:+.2f} MB after warm-up (limit {args.max_rss_growth_mb} MB)")
    print("\nsoak: passed")
    return 0


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds the `with` blocks: every Envoy started here is stopped


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    try:
        sys.exit(main())
    except Failed as e:
        print(f"\nsoak: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
