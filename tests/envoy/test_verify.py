"""`metricpact verify` on live expositions: a real Envoy's /stats/prometheus (saved and scraped
by URL) conforms to the contract it runs; the same scrape judged against another contract, and
an app's rewritten /metrics against its required metrics."""

import json
import subprocess

from harness import CLI, ROOT, sidecar, write_contract

DEFAULT_CONTRACT = ROOT / "contracts/http-server.yaml"


def verify(*args):
    result = subprocess.run([str(CLI), "verify", *map(str, args)], capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout, result.stderr


def test_a_live_sidecar_exposition_conforms_to_its_contract(workdir, upstream):
    with sidecar(workdir, DEFAULT_CONTRACT, upstream.port) as envoy:
        for path in ["/", "/healthz", "/x?status=503", "/y?delay_ms=20"]:
            envoy.request("GET", path)
        envoy.request("POST", "/")
        saved = workdir / "stats.txt"
        saved.write_text(envoy.scrape_text())
        by_url = verify("--contract", DEFAULT_CONTRACT, "--url", f"http://127.0.0.1:{envoy.admin_port}/stats/prometheus",
                        "--format", "json")
    rc, out, err = verify("--contract", DEFAULT_CONTRACT, "--file", saved)
    assert (rc, err) == (0, ""), out
    assert out.splitlines()[-1].startswith("coverage: 3/3 contract metrics present, ")
    rc, out, err = by_url
    assert rc == 0, err
    report = json.loads(out)
    assert report["ok"] is True and report["findings"] == []
    assert report["coverage"]["metrics_found"] == 3


def test_the_same_exposition_against_another_contract_names_each_violation(workdir, upstream):
    other = write_contract(workdir, (DEFAULT_CONTRACT.read_text()
                                     .replace("name: http_server_requests_total     # must end in _total",
                                              "name: http_requests_total")
                                     .replace("methods: [CONNECT, DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT, TRACE]",
                                              "methods: [GET]")), "other.yaml")
    with sidecar(workdir, DEFAULT_CONTRACT, upstream.port) as envoy:
        envoy.request("POST", "/")
        saved = workdir / "stats.txt"
        saved.write_text(envoy.scrape_text())
    rc, out, _ = verify("--contract", other, "--file", saved)
    assert rc == 1
    lines = out.splitlines()
    assert f"{saved}: violation[metric-missing]: http_requests_total: `http_requests_total` is not in the exposition" in lines
    assert (f'{saved}: violation[method-unknown]: http_server_request_duration_milliseconds: '
            '`http_request_method="POST"` is not a known method (it should be `_OTHER`)') in lines
    # error_type only appears on failures, and this scrape saw none.
    assert lines[-1] == "coverage: 2/3 contract metrics present, 9/10 contract labels seen"


def test_a_contract_with_a_policy_runs_in_the_sidecar_and_judges_the_apps_metrics(workdir, upstream):
    # The filter loads a configuration with a `policy` (and counts as before); `verify --target app`
    # judges prom-client's recorded scrape by it.
    contract = write_contract(workdir, DEFAULT_CONTRACT.read_text()
                              + "policy:\n  presets: [prometheus]\n  require_help: true\n", "policy.yaml")
    with sidecar(workdir, contract, upstream.port) as envoy:
        assert envoy.request("GET", "/")[0] == 200
        assert sum(s.value for s in envoy.scrape().series("http_server_requests_total")) == 1
    scrape = ROOT / "tests/data/expositions/node_prom_client.txt"
    rc, out, err = verify("--target", "app", contract, scrape, "--format", "json")
    assert rc == 1, err
    findings = [(f["rule"], f["subject"]) for f in json.loads(out)["findings"]]
    assert findings == [("base-unit", "http_request_duration_ms"), ("gauge-type-suffix", "nodejs_active_handles_total"),
                        ("gauge-type-suffix", "nodejs_active_requests_total"),
                        ("gauge-type-suffix", "nodejs_active_resources_total"), ("counter-suffix", "request_count")]
