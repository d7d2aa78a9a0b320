"""Throughput of metricpact's exposition rewrite, natively (in-process) and through Envoy.

Bodies: a prom-client-style Prometheus text exposition (runtime noise, per-route request
counters, a per-route millisecond histogram, per-queue gauges) of 1 MB and 8 MB. Contracts:
tests/bench/rewrite-inject.yaml (inject the pod identity into every series),
tests/bench/rewrite-rename.yaml (rename every family and three labels, value maps, drop runtime
families, inject) and tests/bench/rewrite-sum.yaml (drop the `method` label of the counters and
the histogram, summing the four methods' series into one; inject).

(a) native: `cargo bench --bench rewrite` (tests/bench/rewrite.rs): the library's Rewriter timed
    in-process over each body, warm-up + N iterations, median and best; MB/s of input.
(b) through Envoy: an upstream Envoy serves the bodies as a direct response; three Envoys (one
    worker, pinned to one CPU), without the filter and with metricpact for each contract, are
    scraped in turn by wrk (one connection: sequential scrapes, pinned with the upstream to the other
    CPU) for several rounds whose order rotates. The added time per scrape is the per-round
    difference of median scrape times with and without the filter (median over rounds), and
    MB/s = body size / added time. All of them run with 64 MiB per_connection_buffer_limit_bytes on
    listener and cluster (the contracts' max_body_bytes is 32 MiB: an 8 MB body grows by the
    injected labels), and the run checks that each filter's output equals `metricpact rewrite`'s
    and that every scrape was rewritten.
(c) instructions per input byte: the native bench's `--count` mode under
    `valgrind --tool=callgrind --toggle-collect=rewrite::counted`: one rewrite of each body, after
    a warm-up one, counted alone. Deterministic (this VM's wall-clock speed swings ~1.7x within
    minutes), so it is the figure to steer by.

usage: .venv/bin/python tests/bench/rewrite_throughput.py [--rounds 5] [--seconds 3] [--iters 15]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import harness, median

CONTRACTS = {"inject-only": benchlib.BENCH / "rewrite-inject.yaml",
             "rename-heavy": benchlib.BENCH / "rewrite-rename.yaml",
             "summing": benchlib.BENCH / "rewrite-sum.yaml",
             # inject-only plus a policy judged after each rewrite (the sidecar's violation counter)
             "inject+policy": benchlib.BENCH / "rewrite-policy.yaml"}
SIZES = {"1 MB": ("/metrics/1mb", 1_000_000), "8 MB": ("/metrics/8mb", 8_000_000)}
BUFFER_LIMIT = 64 << 20
NODE = harness.ISTIO_NODE_METADATA
ACCEPT = "Accept: text/plain;version=0.0.4"

BOUNDS = ["5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "+Inf"]
METHODS = ["GET", "POST", "PUT", "DELETE"]
CODES = ["200", "201", "404", "500"]


def exposition(target_bytes: int) -> bytes:
    """A prom-client-style text exposition of about `target_bytes` (the same shape as
    tests/bench/rewrite.rs's built-in one): runtime noise first, then per-route counters (method x
    status), a per-route/method histogram and per-queue gauges."""
    noise = [
        "# HELP process_cpu_user_seconds_total Total user CPU time spent in seconds.",
        "# TYPE process_cpu_user_seconds_total counter", "process_cpu_user_seconds_total 12.345",
        "# HELP process_resident_memory_bytes Resident memory size in bytes.",
        "# TYPE process_resident_memory_bytes gauge", "process_resident_memory_bytes 98765432",
        "# HELP nodejs_eventloop_lag_seconds Lag of event loop in seconds.",
        "# TYPE nodejs_eventloop_lag_seconds gauge", "nodejs_eventloop_lag_seconds 0.00123",
        "# HELP nodejs_heap_space_size_used_bytes Process heap space size used from Node.js in bytes.",
        "# TYPE nodejs_heap_space_size_used_bytes gauge",
        *[f'nodejs_heap_space_size_used_bytes{{space="{s}"}} {i * 1000 + 17}'
          for i, s in enumerate(["read_only", "new", "old", "code", "shared", "trusted", "new_large_object"])],
        "",
    ]
    head = "\n".join(noise) + "\n"
    per_route = 16 * 85 + 4 * 13 * 110 + 90   # bytes per route, roughly
    routes = max(1, (target_bytes - len(head)) // per_route)
    parts = [head, "# HELP request_count Number of HTTP requests handled, by status code.\n",
             "# TYPE request_count counter\n"]
    for r in range(routes):
        route = f"/api/v1/orders/{r:05d}/items/:id"
        for m in METHODS:
            for c in CODES:
                parts.append(f'request_count{{route="{route}",method="{m}",status_code="{c}"}} '
                             f'{(r * 7 + len(m) * 3 + int(c)) % 100000}\n')
    parts.append("\n# HELP http_request_duration_ms Duration of HTTP requests in ms.\n"
                 "# TYPE http_request_duration_ms histogram\n")
    for r in range(routes):
        route = f"/api/v1/orders/{r:05d}/items/:id"
        for m in METHODS:
            labels = f'route="{route}",method="{m}",status_code="200"'
            count = 0
            for i, le in enumerate(BOUNDS):
                count += (r + i) % 5
                parts.append(f'http_request_duration_ms_bucket{{le="{le}",{labels}}} {count}\n')
            parts.append(f"http_request_duration_ms_sum{{{labels}}} {count * 37.5:g}\n")
            parts.append(f"http_request_duration_ms_count{{{labels}}} {count}\n")
    parts.append("\n# HELP queue_depth Messages waiting, per queue.\n# TYPE queue_depth gauge\n")
    for r in range(routes):
        parts.append(f'queue_depth{{queue="orders-{r:05d}"}} {r % 97}\n')
    return "".join(parts).encode()


def node_args() -> list:
    return [a for k in ("NAME", "NAMESPACE", "WORKLOAD_NAME") for a in ("--node", f"{k}={NODE[k]}")]


def cli_rewrite(contract: Path, body_path: Path) -> bytes:
    res = subprocess.run([str(harness.CLI), "rewrite", "--contract", str(contract), *node_args(), str(body_path)],
                         capture_output=True)
    if res.returncode != 0 or b"rewritten as" not in res.stderr:
        raise RuntimeError(f"metricpact rewrite failed ({res.returncode}): {res.stderr.decode()[-500:]}")
    return res.stdout


# ---------------------------------------------------------------- (a) native

def bench_executable(log=print) -> str:
    """Builds (if needed) the `rewrite` bench with cargo ($CARGO) and returns its executable."""
    argv = [*benchlib.cargo_argv(), "bench", "--bench", "rewrite", "--no-run", "--message-format=json"]
    res = subprocess.run(argv, cwd=benchlib.ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{res.stderr[-3000:]}")
    for line in res.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "rewrite" \
                and msg.get("executable"):
            return msg["executable"]
    raise RuntimeError(f"{' '.join(argv)} named no executable")


def native(args, bodies: dict, cores: benchlib.Cores, log=print) -> dict:
    t0 = time.monotonic()
    exe = bench_executable(log)
    log(f"  native bench: {exe} (cargo took {time.monotonic() - t0:.0f} s)")
    argv = [*benchlib.on_core(cores.envoy), exe, "--bench", "--warmup", str(args.warmup_iters),
            "--iters", str(args.iters), *node_args()]
    for contract, path in CONTRACTS.items():
        for size, body_path in bodies.items():
            argv += ["--case", f"{contract}|{size}", str(path), str(body_path)]
    # Several runs of the whole bench (rounds, like the Envoy part): a budget holds only if every
    # round's median meets it, since this machine's speed swings between minutes.
    out = {}
    for r in range(args.rounds):
        res = subprocess.run(argv, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"the rewrite bench failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        for line in res.stdout.splitlines():
            if line.startswith("BENCH "):
                b = json.loads(line[len("BENCH "):])
                contract, size = b["case"].split("|")
                out.setdefault(contract, {}).setdefault(size, []).append(b)
            else:
                log(f"  native round {r + 1}/{args.rounds}: {line.strip()}")
    summary = {}
    for contract, sizes in out.items():
        for size, runs in sizes.items():
            summary.setdefault(contract, {})[size] = {
                "in_bytes": runs[0]["in_bytes"], "out_bytes": runs[0]["out_bytes"], "iters": runs[0]["iters"],
                "median_mb_s": median(b["median_mb_s"] for b in runs),
                "best_mb_s": max(b["best_mb_s"] for b in runs),
                "rounds_mb_s": [b["median_mb_s"] for b in runs],
            }
    return summary


# ---------------------------------------------------------------- (c) instructions per byte

def instructions(args, bodies: dict, log=print) -> dict:
    """Instructions of one native rewrite per case under callgrind: {contract: {size: {...}}}."""
    exe = bench_executable(log)
    out = {}
    with tempfile.TemporaryDirectory(prefix="metricpact-bench-callgrind-") as tmp:
        for contract, path in CONTRACTS.items():
            for size, body_path in bodies.items():
                profile = Path(tmp) / f"{contract}-{size.replace(' ', '')}.callgrind"
                argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={profile}",
                        "--toggle-collect=rewrite::counted", exe, "--bench", "--count", *node_args(),
                        "--case", f"{contract}|{size}", str(path), str(body_path)]
                res = subprocess.run(argv, capture_output=True, text=True)
                counted = [json.loads(line[len("COUNT "):]) for line in res.stdout.splitlines() if line.startswith("COUNT ")]
                if res.returncode != 0 or len(counted) != 1:
                    raise RuntimeError(f"callgrind of the rewrite bench failed ({res.returncode}):\n{res.stdout}\n{res.stderr[-2000:]}")
                total = callgrind_total(profile)
                if total <= 0:
                    raise RuntimeError(f"{profile}: no instructions counted in rewrite::counted (symbols stripped?)")
                per_byte = total / counted[0]["in_bytes"]
                out.setdefault(contract, {})[size] = {"instructions": total, "in_bytes": counted[0]["in_bytes"],
                                                      "per_byte": per_byte}
                log(f"  instructions: {contract:12s} {size}: {total:,} = {per_byte:.1f} per input byte")
    return out


def callgrind_total(profile: Path) -> int:
    """The event total callgrind wrote (`summary:` or `totals:` line)."""
    for line in profile.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"{profile}: no summary line")


# ---------------------------------------------------------------- (b) through Envoy

def through_envoy(args, bodies: dict, cores: benchlib.Cores, log=print) -> dict:
    variants = ["no filter", *CONTRACTS]
    results = {size: {v: [] for v in variants} for size in SIZES}
    counts = {v: 0 for v in CONTRACTS}
    with tempfile.TemporaryDirectory(prefix="metricpact-bench-rewrite-") as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        routes = [benchlib.direct(200, path=path, body={"filename": str(bodies[size])},
                                  content_type="text/plain; version=0.0.4; charset=utf-8")
                  for size, (path, _) in SIZES.items()]
        upstream = benchlib.started(stack, benchlib.upstream_config(routes, max_body=BUFFER_LIMIT,
                                                                    buffer_limit=BUFFER_LIMIT), tmp, cores.load)
        compiled = {v: harness.compile_contract(path) for v, path in CONTRACTS.items()}
        envoys = {"no filter": benchlib.started(stack, benchlib.proxy_config(
            upstream.port, [], compiled["inject-only"][1], buffer_limit=BUFFER_LIMIT), tmp, cores.envoy)}
        for v, (plugin_config, stats) in compiled.items():
            envoys[v] = benchlib.started(stack, benchlib.proxy_config(
                upstream.port, [harness.wasm_http_filter(plugin_config)], stats, buffer_limit=BUFFER_LIMIT),
                tmp, cores.envoy)
        # Correctness first: each filter's output is the CLI's, the plain Envoy's the body itself.
        t0 = time.monotonic()
        for size, (path, _) in SIZES.items():
            status, got = harness.http_get(envoys["no filter"].port, path, timeout=60)
            if status != 200 or got != bodies[size].read_bytes():
                raise RuntimeError(f"no filter, {path}: status {status}, {len(got)} bytes: not the body")
            for v, contract in CONTRACTS.items():
                expected = cli_rewrite(contract, bodies[size])
                status, got = harness.http_get(envoys[v].port, path, timeout=60)
                counts[v] += 1
                if status != 200 or got != expected:
                    raise RuntimeError(f"{v}, {path}: status {status}, {len(got)} bytes, the CLI's rewrite has "
                                       f"{len(expected)}: the filter did not rewrite it like `metricpact rewrite`")
                results[size].setdefault("out_bytes", {})[v] = len(expected)
        log(f"  through Envoy: each filter's output checked against `metricpact rewrite` ({time.monotonic() - t0:.0f} s)")

        def scrape(v, size, seconds):
            res = benchlib.wrk(f"http://127.0.0.1:{envoys[v].port}{SIZES[size][0]}", seconds=seconds, connections=1,
                               core=cores.load, headers=(ACCEPT,), timeout_s=30)
            if v in counts:
                counts[v] += res.requests
            return res

        for size in SIZES:                      # warm up
            for v in variants:
                scrape(v, size, 1)
        for r in range(args.rounds):
            for size in SIZES:
                for v in benchlib.rotated(variants, r):
                    res = scrape(v, size, args.seconds)
                    results[size][v].append({"p50_ms": res.p50_ms, "mean_ms": res.mean_ms, "scrapes": res.requests})
                    log(f"  rewrite round {r + 1}/{args.rounds}: {size} {v:12s} p50 {res.p50_ms:7.2f} ms  "
                        f"mean {res.mean_ms:7.2f} ms  ({res.requests} scrapes)")
        # Every scrape through a filter was rewritten (none passed through as too large, ...).
        for v in CONTRACTS:
            expo = envoys[v].scrape()
            rewritten = expo.total("metricpact_exposition_scrapes_total", metricpact_result="rewritten")
            other = sum(s.value for s in expo.series("metricpact_exposition_scrapes_total")) - rewritten
            if other or rewritten < counts[v]:
                raise RuntimeError(f"{v}: {rewritten:.0f} scrapes rewritten and {other:.0f} not, of at least "
                                   f"{counts[v]}: {[(s.labels, s.value) for s in expo.series('metricpact_exposition_scrapes_total')]}")

    out = {}
    for size, (_, _) in SIZES.items():
        in_bytes = bodies[size].stat().st_size
        rows = results[size]
        base = rows["no filter"]
        out[size] = {"in_bytes": in_bytes, "no filter": {"p50_ms": median(x["p50_ms"] for x in base)}}
        for v in CONTRACTS:
            added = median(x["p50_ms"] - b["p50_ms"] for x, b in zip(rows[v], base))
            # An added time at or below zero is noise larger than the rewrite: no figure (None),
            # never an infinite MB/s that meets any budget.
            per_round = [in_bytes / 1e6 / ((x["p50_ms"] - b["p50_ms"]) / 1e3) if x["p50_ms"] > b["p50_ms"] else None
                         for x, b in zip(rows[v], base)]
            out[size][v] = {"p50_ms": median(x["p50_ms"] for x in rows[v]), "added_ms": added,
                            "mb_s": in_bytes / 1e6 / (added / 1e3) if added > 0 else None,
                            "rounds_mb_s": per_round, "out_bytes": rows["out_bytes"][v], "rounds": rows[v]}
        out[size]["no filter"]["rounds"] = base
    return out


def run(args, cores: benchlib.Cores, log=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="metricpact-bench-bodies-") as tmp:
        bodies = {}
        for size, (_, nbytes) in SIZES.items():
            bodies[size] = Path(tmp) / f"exposition-{nbytes}.txt"
            bodies[size].write_bytes(exposition(nbytes))
        result = {"native": native(args, bodies, cores, log)}
        result["instructions"] = instructions(args, bodies, log)
        result["envoy"] = through_envoy(args, bodies, cores, log)
    return result


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--rounds", type=int, default=5, help="rounds: alternating scrapes through Envoy, and runs of the native bench")
    parser.add_argument("--seconds", type=int, default=3, help="wrk seconds per Envoy, body size and round")
    parser.add_argument("--iters", type=int, default=15, help="native timed iterations per case")
    parser.add_argument("--warmup-iters", type=int, default=3, help="native warm-up iterations per case")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--cores", help="ENVOY,LOAD CPU numbers (default: the first two allowed)")
    args = parser.parse_args()
    result = run(args, benchlib.Cores.choose(args.cores))
    print()
    for contract, sizes in result["native"].items():
        for size, r in sizes.items():
            print(f"native   {contract:12s} {size}: median {r['median_mb_s']:8.1f} MB/s  best {r['best_mb_s']:8.1f} MB/s")
    for contract, sizes in result["instructions"].items():
        for size, r in sizes.items():
            print(f"count    {contract:12s} {size}: {r['per_byte']:8.1f} instructions per input byte")
    for size, r in result["envoy"].items():
        for contract in CONTRACTS:
            e = r[contract]
            speed = "within noise" if e["mb_s"] is None else f"{e['mb_s']:.1f} MB/s"
            print(f"envoy    {contract:12s} {size}: +{e['added_ms']:.2f} ms per scrape (no filter "
                  f"{r['no filter']['p50_ms']:.2f} ms) = {speed}")


if __name__ == "__main__":
    sys.exit(main())
