#!/usr/bin/env python3
"""Regenerates the checked-in seed corpora in tests/fuzz/corpus/<target>/ from the project's own
files: recorded expositions, the contracts, their compiled plugin configurations (through
target/release/metricpact, `make cli`) and a few hand-written requests.

    python3 tests/fuzz/seeds.py

Seeds are named by content, so running it again only adds what changed. Input layouts are
documented at the top of each fuzz target."""

import hashlib
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests/fuzz/corpus"
CLI = ROOT / "target/release/metricpact"


def seed(target, data, name=None):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    name = name or hashlib.sha1(data).hexdigest()[:16]
    (d / name).write_bytes(data)


def contracts():
    return sorted((ROOT / "contracts").glob("*.yaml")) + sorted((ROOT / "tests/data/contracts").glob("*.yaml"))


def exposition_seeds():
    # Byte 0: contract (0 identity, 1 inject-only, 2 renames, 3 label drops/maps, 4 keep/drop/
    # require, then the checked-in contracts with an `exposition` section, then 9 migrations); byte 1: how the body
    # is announced (0: by its content); then the body.
    expositions = sorted((ROOT / "tests/data/expositions").glob("*.txt"))
    # The contract written for each client library's exposition (indices into the rewriters).
    matching = {"node_prom_client": 6, "python_prometheus_client": 7, "python_otel": 8}
    for path in expositions:
        body = path.read_bytes()
        seed("exposition", bytes([0, 0]) + body, f"identity-{path.stem}")
        seed("exposition", bytes([matching[path.name.split(".")[0]], 0]) + body, f"contract-{path.stem}")
    small = {
        "text": b'# HELP request_count Requests\n# TYPE request_count counter\nrequest_count{status_code="200",method="GET",pid="1"} 7\n'
        b'request_count{status_code="200",method="GET",pid="2"} 1 1700000000000\n# TYPE latency_ms histogram\n'
        b'latency_ms_bucket{le="10",pid="1"} 1\nlatency_ms_bucket{le="+Inf",pid="1"} 2\nlatency_ms_sum{pid="1"} 30\n'
        b'latency_ms_count{pid="1"} 2\nlatency_ms_created{pid="1"} 1.7e9\n# a comment\nuntyped_x{a="b\\"c\\\\d\\n"} NaN\n',
        "om": b'# TYPE a_seconds counter\n# HELP a_seconds Things\n# UNIT a_seconds seconds\n'
        b'a_seconds_total{route="/users/:id"} 1 # {trace_id="x"} 1 1.5\na_seconds_created 1.7e9\n# TYPE x info\nx_info{v="1"} 1\n# TYPE s stateset\ns{s="a"} 1\n# TYPE g gaugehistogram\n'
        b'g_bucket{le="+Inf"} 1\ng_gcount 1\ng_gsum 2\n# TYPE q summary\nq{quantile="0.5"} 1\nq_sum 2\nq_count 3\n# EOF\n',
    }
    for name, body in small.items():
        for selector in range(5):
            for mode in (0, 4):
                seed("exposition", bytes([selector, mode]) + body, f"{name}-{selector}-{mode}")
    # The held families' paths (contract 3: drops `pid` and `a`, maps `status`, `route` and `b`):
    # series that merge, a gauge whose merge is refused (written again as it was), a HELP line
    # and free comments after the first held sample (they go before the held samples), and
    # OpenMetrics samples with timestamps and exemplars converted to text.
    held = {
        "held-text": b'# TYPE c_total counter\nc_total{pid="1",status="OK"} 1\n# a comment\nc_total{pid="2",status="200"} 2\n'
        b'# HELP c_total Counted\nc_total{pid="3",status="q"} 3 1700000000000\n# TYPE g gauge\ng{pid="1",b="x"} 1\n'
        b'# HELP g After a sample\ng{pid="2",b="y"} 2\n# TYPE h histogram\nh_bucket{le="1",pid="1",route="/u/:id"} 1\n'
        b'h_bucket{le="1",pid="2",route="/u/:id"} 2\nh_sum{pid="1"} 1.5\nh_sum{pid="2"} -Inf\nh_count{pid="1"} 1\nh_count{pid="2"} 2\n'
        b'# TYPE s summary\ns{quantile="0.5",pid="1"} 1\ns{quantile="0.5",pid="2"} 2\ns_sum{pid="1"} 1\ns_sum{pid="2"} 2\n'
        b'c_created{pid="1"} 1.7e9\nc_created{pid="2"} 1.6e9\n',
        "held-om": b'# TYPE c counter\n# HELP c Counted\nc_total{pid="1",a="x"} 1 1700000000.5 # {trace_id="t"} 1 1.5\n'
        b'c_total{pid="2",a="y"} 2 1700000001\nc_created{pid="1"} 1.7e9\nc_created{pid="2"} 1.6e9\n# TYPE g gauge\n'
        b'g{pid="1"} 1\ng{pid="2"} NaN\n# EOF\n',
    }
    for name, body in held.items():
        for mode in (0, 4, 5):
            seed("exposition", bytes([3, mode]) + body, f"{name}-3-{mode}")
    # The last contract: migrations of family and label names (one label renamed twice).
    migrating = 9
    for name, body in {**small, **held}.items():
        seed("exposition", bytes([migrating, 0]) + body, f"{name}-{migrating}-0")
    seed("exposition", bytes([migrating, 0]) + b'# TYPE request_count counter\nrequest_count{status_code="200",a="1"} 1\n'
         b'# TYPE h histogram\nh_bucket{le="1",c="x",pid="1"} 1\nh_bucket{le="1",c="x",pid="2"} 2\nh_sum{pid="1"} 1\n'
         b'# TYPE c_total counter\nc_total{b="y"} 3\n', "migrations-9-0")


def stat_names_seeds():
    # Byte 0: configuration (0 http-server, 1 rest-api, 2 grpc-service, 3 hostile with tight
    # budgets, 4 hostile); then 0xFF-separated chunks: node metadata (0xFE-separated NAME,
    # NAMESPACE, LABELS.service.istio.io/canonical-name, LABELS.app, LABELS.app.kubernetes.io/name,
    # WORKLOAD_NAME, CLUSTER_ID), then requests (0xFE-separated flags, method, path, scheme,
    # x-forwarded-proto, protocol, x-tenant, x-org, x-tier, x-zone, x-tenant-tier, status as two
    # little-endian bytes, response details, content-type, gRPC status byte: status + 2, so 1 is
    # Envoy's -1 "unreadable").
    node = b"\xfe".join([b"cart-7d9f8b6c5-x2x8k", b"shop", b"", b"cart", b"cart-app", b"cart-wl", b"c1"])

    def req(flags, method, path, status, details=b"via_upstream", scheme=b"http", xfp=b"https", proto=b"HTTP/1.1",
            tenant=b"acme", org=b"org;.;k8s_pod_name=.=x", tier=b"pro", zone=b"eu", tenant_tier=b"free",
            content_type=b"text/plain", grpc_status=2):
        return b"\xfe".join([bytes([flags]), method, path, scheme, xfp, proto, tenant, org, tier, zone, tenant_tier,
                             status.to_bytes(2, "little"), details, content_type, bytes([grpc_status + 2])])

    requests = [
        req(0, b"GET", b"/users/42?x=1", 200),
        req(0, b"POST", b"/api/v2/orders/0123456789abcdef0123456789abcdef0123", 503, b"upstream_reset_before_response_started"),
        req(1, b"BREW", b"/r/a;b/c=d", 404),
        req(0, b"get", b"/price/9", 0, b"no_healthy_upstream"),
        req(0, b"GET", b"/money/12", 200, tier=b"x;y"),
        req(0, b"DELETE", b"/e\xc3\xa9\x00\n\"\\", 500, proto=b"HTTP/2"),
        req(0, b"POST", b"/orders.v1.Orders/Create", 200, proto=b"HTTP/2"),
        req(0, b"GET", b"/static/app.js", 302, xfp=b"", scheme=b"HTTPS"),
        # gRPC calls: OK, a caller's NOT_FOUND, a server UNAVAILABLE, an unreadable status, a reset.
        req(0, b"POST", b"/shop.v1.Inventory/Get", 200, proto=b"HTTP/2", content_type=b"application/grpc", grpc_status=0),
        req(0, b"POST", b"/shop.v1.Inventory/Get", 200, proto=b"HTTP/2", content_type=b"application/grpc+proto", grpc_status=5),
        req(0, b"POST", b"/shop.v1.Inventory/List?x", 200, proto=b"HTTP/2", content_type=b"application/grpc", grpc_status=14),
        req(0, b"POST", b"/only-one-part", 200, proto=b"HTTP/2", content_type=b"application/grpc;x=y", grpc_status=-1),
        req(0, b"POST", b"/a.B/C", 200, b"upstream_reset_after_response_started{remote_reset}", proto=b"HTTP/2",
            content_type=b"application/grpc", grpc_status=2),
        req(0, b"POST", b"/a.B/C", 200, proto=b"HTTP/2", content_type=b"application/grpc-web", grpc_status=13),
    ]
    body = b"\xff".join([node] + requests)
    for selector in range(5):
        seed("stat_names", bytes([selector]) + body, f"requests-{selector}")
        seed("stat_names", bytes([selector]) + b"\xfe\xfe\xfe\xfe\xfe\xfe\xff" + requests[0], f"empty-node-{selector}")


def plugin_config_seeds():
    if not CLI.exists():
        sys.exit(f"{CLI} is missing: run `make cli` first")
    for path in contracts():
        out = subprocess.run([CLI, "compile", path], capture_output=True, check=True).stdout
        seed("plugin_config", out, f"{path.stem}.json")


def contract_seeds():
    for path in contracts() + [ROOT / "tests/demo/shop.yaml"]:
        seed("contract", path.read_bytes(), path.name)
    seed("contract", b"format: metricpact/v1\nname: checkout\nversion: 1.0.0\n", "minimal.yaml")
    seed("contract", b"format: metricpact/v1\nname: Bad_Name\nversion: ''\nlabels:\n  - name: pod\n    from: request.nope\n",
         "errors.yaml")


if __name__ == "__main__":
    exposition_seeds()
    stat_names_seeds()
    plugin_config_seeds()
    contract_seeds()
    for d in sorted(CORPUS.iterdir()):
        files = list(d.iterdir())
        print(f"{d.relative_to(ROOT)}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")
