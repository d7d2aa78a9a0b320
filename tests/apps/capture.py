"""Starts one of the metrics test apps on a free port, fetches its /metrics with a chosen Accept header,
writes the body to a file (or stdout) and prints the status line and the response headers that matter
(Content-Type, Content-Encoding, Content-Length). Every app process it starts is stopped before it exits.

Usage:
    capture.py one APP [--accept A] [--accept-encoding E] [--raw] [--out FILE] [-- APP_ARGS...]
    capture.py all [--dir DIR]          re-capture every sample in tests/data/expositions/ (see SAMPLES)
    capture.py check [--dir DIR]        check every sample: `promtool check metrics` (text format 0.0.4
                                        only: it cannot parse OpenMetrics) and, for *.om.txt,
                                        prometheus_client's OpenMetrics parser

APP is one of: python (metrics_python.py), node (metrics_node.js), otel (metrics_otel.py).
APP_ARGS are passed to the app after `--port N` (e.g. `-- --openmetrics`, `-- --gzip`,
`-- --content-type none`).

--accept A takes a preset or a literal header value:
    none         send no Accept header
    text         text/plain;version=0.0.4
    openmetrics  application/openmetrics-text;version=1.0.0
    prometheus2  the Accept header Prometheus 2.42 sends by default (captured from the Debian binary)
    prometheus3  the Accept header Prometheus 3.x sends by default (from its scrape.go acceptHeader(),
                 default scrape_protocols, UTF-8 names: not captured from a live binary)
--accept-encoding E   send Accept-Encoding: E (default: none sent). A gzip body is written decoded
                      unless --raw is given.
"""

import argparse
import gzip
import http.client
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
if not os.path.exists(PYTHON):
    PYTHON = sys.executable

APPS = {
    "python": [PYTHON, os.path.join(HERE, "metrics_python.py")],
    "node": ["node", os.path.join(HERE, "metrics_node.js")],
    "otel": [PYTHON, os.path.join(HERE, "metrics_otel.py")],
}

ACCEPT_PRESETS = {
    "none": None,
    "text": "text/plain;version=0.0.4",
    "openmetrics": "application/openmetrics-text;version=1.0.0",
    "prometheus2": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "prometheus3": "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
}

# The recorded samples: file name -> (app, app args, Accept preset).
SAMPLES = {
    "python_prometheus_client.txt": ("python", [], "none"),
    "python_prometheus_client.om.txt": ("python", [], "prometheus2"),
    "node_prom_client.txt": ("node", [], "prometheus2"),
    "node_prom_client.om.txt": ("node", ["--openmetrics"], "prometheus2"),
    "python_otel.txt": ("otel", [], "none"),
    "python_otel.om.txt": ("otel", [], "prometheus2"),
}

_children = []


def _stop(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the app runs in its own session (process group)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _on_signal(signum, _frame):
    for proc in _children:
        _stop(proc)
    sys.exit(128 + signum)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(app, app_args):
    port = free_port()
    proc = subprocess.Popen(
        APPS[app] + ["--port", str(port)] + list(app_args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    _children.append(proc)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{app} exited with status {proc.returncode} before serving")
        try:
            status, _, _ = fetch(port, "/healthz", None, None)
            if status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.1)
    _stop(proc)
    raise RuntimeError(f"{app} did not answer /healthz on port {port}")


def fetch(port, path, accept, accept_encoding):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        if accept is not None:
            conn.putheader("Accept", accept)
        if accept_encoding is not None:
            conn.putheader("Accept-Encoding", accept_encoding)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def capture(app, app_args, accept, accept_encoding=None, raw=False):
    """Returns (status, headers, body) of one /metrics fetch from a freshly started app."""
    accept = ACCEPT_PRESETS.get(accept, accept)
    proc, port = start_app(app, app_args)
    try:
        status, headers, body = fetch(port, "/metrics", accept, accept_encoding)
    finally:
        _stop(proc)
        _children.remove(proc)
    encoding = dict((k.lower(), v) for k, v in headers).get("content-encoding")
    if encoding == "gzip" and not raw:
        body = gzip.decompress(body)
    return status, headers, body


def report(label, status, headers, body):
    h = dict((k.lower(), v) for k, v in headers)
    print(f"{label}: status {status}", file=sys.stderr)
    for name in ("content-type", "content-encoding", "content-length"):
        print(f"  {name}: {h.get(name, '(absent)')}", file=sys.stderr)
    print(f"  body bytes written: {len(body)}", file=sys.stderr)


def check(directory):
    """Prints promtool's verdict on every sample and, for OpenMetrics samples, whether
    prometheus_client's strict OpenMetrics parser accepts it. Returns the number of OM parse failures."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    failed = 0
    for name in SAMPLES:
        path = os.path.join(directory, name)
        with open(path, "rb") as f:
            data = f.read()
        res = subprocess.run(["promtool", "check", "metrics"], input=data, capture_output=True)
        out = (res.stdout + res.stderr).decode().strip()
        print(f"{name}: promtool check metrics exit {res.returncode}")
        for line in out.splitlines():
            print(f"    {line}")
        if name.endswith(".om.txt"):
            try:
                fams = list(text_string_to_metric_families(data.decode("utf-8")))
                samples = sum(len(fam.samples) for fam in fams)
                exemplars = sum(1 for fam in fams for s in fam.samples if s.exemplar)
                print(f"    OpenMetrics parser: ok, {len(fams)} families, {samples} samples, {exemplars} exemplars")
            except Exception as e:  # noqa: BLE001 - report any parse error
                print(f"    OpenMetrics parser: FAILED: {e}")
                failed += 1
    return failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    one = sub.add_parser("one", help="capture one app's /metrics")
    one.add_argument("app", choices=sorted(APPS))
    one.add_argument("--accept", default="none", help="preset (%s) or literal value" % ", ".join(ACCEPT_PRESETS))
    one.add_argument("--accept-encoding")
    one.add_argument("--raw", action="store_true", help="write a gzip body as received")
    one.add_argument("--out", help="output file (default: stdout)")
    every = sub.add_parser("all", help="re-capture all recorded samples")
    every.add_argument("--dir", default=os.path.join(ROOT, "tests", "data", "expositions"))
    chk = sub.add_parser("check", help="check all recorded samples with promtool and the OM parser")
    chk.add_argument("--dir", default=os.path.join(ROOT, "tests", "data", "expositions"))
    argv = sys.argv[1:]
    app_args = argv[argv.index("--") + 1 :] if "--" in argv else []  # everything after -- is the app's
    argv = argv[: argv.index("--")] if "--" in argv else argv
    args = parser.parse_args(argv)
    if app_args and args.cmd != "one":
        parser.error("app arguments after -- only apply to `one`")
    if args.cmd == "check":
        return 1 if check(args.dir) else 0

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        if args.cmd == "one":
            status, headers, body = capture(args.app, app_args, args.accept, args.accept_encoding, args.raw)
            if args.out:
                with open(args.out, "wb") as f:
                    f.write(body)
            else:
                sys.stdout.buffer.write(body)
                sys.stdout.flush()
            report(f"{args.app} {' '.join(app_args)}".strip(), status, headers, body)
            return 0 if status == 200 else 1
        os.makedirs(args.dir, exist_ok=True)
        failed = 0
        for name, (app, app_args, accept) in SAMPLES.items():
            status, headers, body = capture(app, app_args, accept)
            with open(os.path.join(args.dir, name), "wb") as f:
                f.write(body)
            report(f"{name} ({app} {' '.join(app_args)} Accept={accept})", status, headers, body)
            failed += status != 200
        return 1 if failed else 0
    except RuntimeError as e:
        print(f"capture.py: {e}", file=sys.stderr)
        return 1
    finally:
        for proc in list(_children):
            _stop(proc)


if __name__ == "__main__":
    sys.exit(main())
