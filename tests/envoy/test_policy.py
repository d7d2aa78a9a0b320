"""The contract's `policy` on a real app behind a real Envoy: the sidecar counts each scrape's
violations by rule, metric and severity; `verify --target app` explains the same scrape; and the
honesty cross-check judges an app's own request counter against the sidecar's under real load."""

import contextlib
import json
import subprocess

from exposition_support import APPS_DIR, PYTHON, ScrapingPrometheus, Target, start_app
from harness import CLI, ROOT, sidecar, wait_until, write_contract

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
        for n in range(1, 4):
            status, body = envoy.request("GET", "/metrics")
            assert status == 200
            # Judged a second after the scrape, once Envoy has written it.
            wait_until(lambda: violations(envoy).get(("base-unit", "requestLatencyMs", "error")) == n, timeout=10,
                       what=f"scrape {n} judged")
        # The scrape reached the scraper unchanged by the policy (it only counts).
        assert b"requestLatencyMs_bucket{" in body and b"queue_depth_total 4.0" in body
        scraped = workdir / "scrape.txt"
        scraped.write_bytes(body)
        assert violations(envoy) == {
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


CROSS_CHECK = """
exposition:
  paths: [/metrics]
policy:
  cross_checks:
    - app: app_requests_total
      match:
        - {app: code, sidecar: http_response_status_code, by: status_class}
      exclude:
        http_route: /metrics|/healthz
      tolerance_percent: 5
"""

# The load: real concurrent clients through the sidecar, 800 successes and 200 failures.
LOAD = ["/work"] * 800 + ["/fail"] * 200
CLIENTS = 8


def send_load(port: int):
    """Sends LOAD through the sidecar from CLIENTS threads, each on its own keep-alive connection."""
    import http.client
    from concurrent.futures import ThreadPoolExecutor

    def client(paths):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        statuses = []
        for path in paths:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        conn.close()
        return statuses

    shares = [LOAD[i::CLIENTS] for i in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        statuses = [s for share in pool.map(client, shares) for s in share]
    assert sorted(statuses) == [200] * 800 + [500] * 200


def cross_check_under_load(workdir, app_args, window=8):
    """`verify --target cross-check` scraping the app (through the sidecar) and the sidecar twice,
    `window` seconds apart, with LOAD sent between the two scrapes."""
    import time

    contract = write_contract(workdir, DEFAULT_CONTRACT.read_text() + CROSS_CHECK, "cross-check.yaml")
    with contextlib.ExitStack() as stack:
        app = start_app(stack, [*COUNTING_APP, *app_args], workdir, "counting-app")
        envoy = stack.enter_context(sidecar(workdir, contract, app))
        envoy.request("GET", "/work")  # counted before the window: not in it
        verify = subprocess.Popen(
            [str(CLI), "verify", contract, "--target", "cross-check", "--window", f"{window}s",
             "--app-url", f"http://127.0.0.1:{envoy.port}/metrics",
             "--sidecar-url", f"http://127.0.0.1:{envoy.admin_port}/stats/prometheus"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            started = verify.stderr.readline()
            assert started == f"metricpact: cross-check: first scrapes done; the second in {window} s\n", started
            began = time.monotonic()
            send_load(envoy.port)
            took = time.monotonic() - began
            assert took < window - 1, f"the load took {took:.1f} s: it must end inside the window"
            out, err = verify.communicate(timeout=window + 60)
        finally:
            if verify.poll() is None:
                verify.kill()
    return verify.returncode, out, err


def test_the_cross_check_passes_an_honest_app_under_load(workdir):
    rc, out, err = cross_check_under_load(workdir, [])
    assert (rc, err) == (0, ""), out
    assert out.splitlines() == [
        'notice[cross-check]: app_requests_total: {code="2xx"}: the app counted 800 requests in 8 s, the sidecar 800 '
        "(+0.0 %, within 5 %)",
        'notice[cross-check]: app_requests_total: {code="5xx"}: the app counted 200 requests in 8 s, the sidecar 200 '
        "(+0.0 %, within 5 %)",
    ]


def test_the_cross_check_fails_an_app_that_drops_a_tenth_of_its_increments(workdir):
    rc, out, err = cross_check_under_load(workdir, ["--drop-every", "10"])
    assert (rc, err) == (1, ""), out
    assert out.splitlines() == [
        'violation[cross-check]: app_requests_total: {code="2xx"}: the app counted 720 requests in 8 s, the sidecar 800 '
        "(-10.0 %, tolerance 5 %)",
        'violation[cross-check]: app_requests_total: {code="5xx"}: the app counted 180 requests in 8 s, the sidecar 200 '
        "(-10.0 %, tolerance 5 %)",
    ]


def test_the_cross_check_reads_the_same_window_from_a_real_prometheus(workdir):
    # Prometheus scrapes the app through the sidecar and the sidecar's own metrics every second;
    # verify reads both counters at the window's two ends (instant queries) and checks resets.
    import math
    import time

    contract = write_contract(workdir, DEFAULT_CONTRACT.read_text() + CROSS_CHECK, "cross-check.yaml")
    with contextlib.ExitStack() as stack:
        app = start_app(stack, [*COUNTING_APP, "--drop-every", "10"], workdir, "counting-app")
        envoy = stack.enter_context(sidecar(workdir, contract, app))
        prom = stack.enter_context(ScrapingPrometheus(workdir, [
            Target("app", f"127.0.0.1:{envoy.port}", "/metrics"),
            Target("sidecar", f"127.0.0.1:{envoy.admin_port}", "/stats/prometheus")]))
        prom.wait_scraped()
        envoy.request("GET", "/work")  # before the window

        def stored(query):
            result = prom.query(query)
            return float(result[0]["value"][1]) if result else None

        app_total = 'sum(app_requests_total)'
        sidecar_total = 'sum(http_server_requests_total{http_route!~"/metrics|/healthz"})'
        wait_until(lambda: stored(app_total) == 1 and stored(sidecar_total) == 1, timeout=20, what="the warm-up request stored")
        time.sleep(1.5)
        start = time.time()
        send_load(envoy.port)
        # 800 of the 801 successes and the 200 failures minus each tenth: 1 + 720 + 180.
        wait_until(lambda: stored(app_total) == 901 and stored(sidecar_total) == 1001, timeout=20, what="the load stored")
        end = time.time()
        window = math.ceil(end - start)
        rc, out, err = cli("verify", contract, "--target", "cross-check", "--prometheus", f"http://127.0.0.1:{prom.port}",
                           "--window", f"{window}s", "--end", f"{end:.3f}", "--format", "json")
    assert (rc, err) == (1, ""), out
    report = json.loads(out)
    assert report["ok"] is False
    assert [(f["severity"], f["rule"], f["subject"], f["message"]) for f in report["findings"]] == [
        ("error", "cross-check", "app_requests_total",
         f'{{code="2xx"}}: the app counted 720 requests in {window} s, the sidecar 800 (-10.0 %, tolerance 5 %)'),
        ("error", "cross-check", "app_requests_total",
         f'{{code="5xx"}}: the app counted 180 requests in {window} s, the sidecar 200 (-10.0 %, tolerance 5 %)'),
    ]
