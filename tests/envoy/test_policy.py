"""The contract's `policy` on a real app behind a real Envoy: the sidecar counts each scrape's
violations by rule, metric and severity; `verify --target app` explains the same scrape; and the
honesty cross-check judges an app's own request counter against the sidecar's under real load."""

import contextlib
import json
import subprocess

from exposition_support import APPS_DIR, PYTHON, start_app
from harness import CLI, ROOT, sidecar, write_contract

DEFAULT_CONTRACT = ROOT / "contracts/http-server.yaml"
COUNTING_APP = [PYTHON, APPS_DIR / "counting_app.py"]

POLICY = """
exposition:
  paths: [/metrics]
policy:
  presets: [prometheus]
  require_help: true
  severity:
    snake-case: warning
"""

VIOLATIONS = "metricpact_policy_violations_total"


def cli(*args):
    result = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=120)
    return result.returncode, result.stdout, result.stderr


def violations(envoy) -> dict:
    return {(s.labels["metricpact_rule"], s.labels["metricpact_metric"], s.labels["metricpact_severity"]): s.value
            for s in envoy.scrape().series(VIOLATIONS)}


def test_the_sidecar_counts_each_scrapes_violations_by_rule_metric_and_severity(workdir):
    contract = write_contract(workdir, DEFAULT_CONTRACT.read_text() + POLICY, "policy.yaml")
    with contextlib.ExitStack() as stack:
        app = start_app(stack, [*COUNTING_APP, "--legacy-names"], workdir, "legacy-app")
        envoy = stack.enter_context(sidecar(workdir, contract, app))
        assert violations(envoy) == {}, "nothing counted before a scrape"
        for _ in range(3):
            status, body = envoy.request("GET", "/metrics")
            assert status == 200
        # The scrape reached the scraper unchanged by the policy (it only counts).
        assert b"requestLatencyMs_bucket{" in body and b"queue_depth_total 4.0" in body
        scraped = workdir / "scrape.txt"
        scraped.write_bytes(body)
        # Counted once the scrape's stream is logged: wait for the third.
        counted = {}
        for _ in range(100):
            counted = violations(envoy)
            if counted.get(("base-unit", "requestLatencyMs", "error")) == 3:
                break
        assert counted == {
            ("base-unit", "requestLatencyMs", "error"): 3,
            ("snake-case", "requestLatencyMs", "warning"): 3,  # its name and its label: once a scrape
            ("gauge-type-suffix", "queue_depth_total", "error"): 3,
            ("help-required", "cache_evictions_total", "error"): 3,
        }
    # verify explains the same scrape, rule by rule (prometheus_client 0.26.0's own exposition).
    rc, out, err = cli("verify", "--target", "app", contract, scraped)
    assert (rc, err) == (1, ""), out
    assert out.splitlines()[:-1] == [
        f"{scraped}: violation[help-required]: cache_evictions_total: `cache_evictions_total` has no HELP text",
        f"{scraped}: violation[gauge-type-suffix]: queue_depth_total: gauge `queue_depth_total` ends in `_total`, "
        "which names a counter or a histogram's series",
        f"{scraped}: violation[base-unit]: requestLatencyMs: `requestLatencyMs` is in `ms`: Prometheus names carry "
        "the base unit (`_seconds`), and values in it",
        f"{scraped}: warning[snake-case]: requestLatencyMs: `requestLatencyMs` is not snake_case (lowercase words "
        "joined by `_`)",
        f"{scraped}: warning[snake-case]: requestLatencyMs: label `userTier` of `requestLatencyMs` is not snake_case",
    ]
