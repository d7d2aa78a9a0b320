"""Does the sidecar's policy judgement hold the scrape it judges? Times 8 MB-input scrapes (14.6 MB
rewritten) to their last byte, one at a time with a pause between (each judgement done before the
next scrape), through a real Envoy with the inject-only contract and with inject+policy
(tests/bench/rewrite-*.yaml). Prints the median and best of each; equal medians: not held.

    .venv/bin/python tests/bench/scrape_hold.py      (about 1 min; starts and stops its own Envoys)
"""
import contextlib
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "envoy")]

import benchlib  # noqa: E402
import harness  # noqa: E402
import rewrite_throughput as rt  # noqa: E402

PATH = "/metrics/8mb"
ROUNDS, WARMUP = 12, 2
PAUSE_S = 1.6  # the filter judges a second after a scrape (JUDGE_DELAY in src/filter.rs)


def time_to_last_byte(port: int) -> tuple:
    """(milliseconds from sending the request to the last byte, bytes received)."""
    sock = socket.create_connection(("127.0.0.1", port))
    start = time.perf_counter()
    sock.sendall(f"GET {PATH} HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\nConnection: close\r\n\r\n".encode())
    received = 0
    while chunk := sock.recv(1 << 20):
        received += len(chunk)
    sock.close()
    return (time.perf_counter() - start) * 1e3, received


def main():
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        body = tmp / "8mb.txt"
        body.write_bytes(rt.exposition(8_000_000))
        routes = [benchlib.direct(200, path=PATH, body={"filename": str(body)},
                                  content_type="text/plain; version=0.0.4; charset=utf-8")]
        upstream = benchlib.started(stack, benchlib.upstream_config(routes, max_body=rt.BUFFER_LIMIT,
                                                                    buffer_limit=rt.BUFFER_LIMIT), tmp, None)
        envoys = {}
        for variant in ["inject-only", "inject+policy"]:
            plugin_config, stats = harness.compile_contract(rt.CONTRACTS[variant])
            envoys[variant] = benchlib.started(stack, benchlib.proxy_config(
                upstream.port, [harness.wasm_http_filter(plugin_config)], stats, buffer_limit=rt.BUFFER_LIMIT), tmp, None)
        times = {v: [] for v in envoys}
        for r in range(ROUNDS):
            for variant, envoy in envoys.items():
                ms, received = time_to_last_byte(envoy.port)
                time.sleep(PAUSE_S)
                if r >= WARMUP:
                    times[variant].append(ms)
        for variant, xs in times.items():
            print(f"{variant:14s} time to the last byte: median {statistics.median(xs):.1f} ms, best {min(xs):.1f} ms "
                  f"({received} bytes)")
        judged = sum(s.value for s in envoys["inject+policy"].scrape().series("metricpact_policy_violations_total"))
        print(f"violations counted by inject+policy: {judged:.0f}")


if __name__ == "__main__":
    main()
