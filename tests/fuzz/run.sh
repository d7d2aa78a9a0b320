#!/usr/bin/env bash
# Builds the fuzz targets and runs each for FUZZ_SECONDS (default 300), then prints a summary
# with the executions per target. Exits non-zero if a target crashed (or failed to run).
#
#   tests/fuzz/run.sh [TARGET...]           # all targets when none is named
#   FUZZ_SECONDS=30 tests/fuzz/run.sh       # what `make fuzz-smoke` runs
#   CARGO="cargo +nightly" tests/fuzz/run.sh
#   FUZZ_RUNS=10000000 tests/fuzz/run.sh    # each target until 10 M executions (`make fuzz-goal`),
#                                           # FUZZ_SECONDS then caps each target's time (default 3 h)
#
# Works on the stable toolchain: cargo-fuzz builds with `--sanitizer none` (the targets are safe
# Rust; libFuzzer's coverage instrumentation needs no nightly flag). Everything it writes stays
# under target/fuzz: the binaries, the growing corpus of each target (target/fuzz/corpus/TARGET,
# seeded from the checked-in tests/fuzz/corpus/TARGET, which is never written to), crash inputs
# (target/fuzz/artifacts/TARGET/) and libFuzzer's log (target/fuzz/logs/TARGET.log).
# Reproduce a crash: target/fuzz/<host triple>/release/TARGET target/fuzz/artifacts/TARGET/crash-…
set -uo pipefail
cd "$(dirname "$0")/../.."

CARGO=${CARGO:-cargo}
FUZZ_RUNS=${FUZZ_RUNS:-}
if [ -n "$FUZZ_RUNS" ]; then FUZZ_SECONDS=${FUZZ_SECONDS:-10800}; else FUZZ_SECONDS=${FUZZ_SECONDS:-300}; fi
FUZZ_DIR=tests/fuzz
OUT=$PWD/target/fuzz
ALL=(exposition stat_names plugin_config contract)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL[@]}")

log() { printf 'fuzz: %s\n' "$*"; }

# shellcheck disable=SC2086  # CARGO may carry a toolchain (`cargo +stable`) or a wrapper
if ! $CARGO fuzz --version >/dev/null 2>&1; then
  log "cargo-fuzz is missing: run \`make deps\` (tests/setup.sh installs it)"
  exit 2
fi
# The fuzz workspace's lock starts as the project's, so the core builds with the versions the
# project pins (it is not checked in: it would drift whenever the project's dependencies change).
[ -f "$FUZZ_DIR/Cargo.lock" ] || cp Cargo.lock "$FUZZ_DIR/Cargo.lock"
log "building ${targets[*]} (cargo fuzz build --sanitizer none: stable toolchain)"
for t in "${targets[@]}"; do
  [ -f "$FUZZ_DIR/fuzz_targets/$t.rs" ] || { log "no fuzz target \`$t\` (have: ${ALL[*]})"; exit 2; }
done
# shellcheck disable=SC2086
if ! $CARGO fuzz build --fuzz-dir "$FUZZ_DIR" --sanitizer none --release --debug-assertions --target-dir "$OUT"; then
  log "build failed"
  exit 2
fi
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=$OUT/$triple/release

declare -A result execs took
failed=0
for t in "${targets[@]}"; do
  corpus=$OUT/corpus/$t
  artifacts=$OUT/artifacts/$t
  logfile=$OUT/logs/$t.log
  mkdir -p "$corpus" "$artifacts" "$OUT/logs"
  args=(
    -max_total_time="$FUZZ_SECONDS"
    -print_final_stats=1
    -timeout=20
    -rss_limit_mb=2048
    -artifact_prefix="$artifacts/"
  )
  [ -f "$FUZZ_DIR/dict/$t.dict" ] && args+=(-dict="$FUZZ_DIR/dict/$t.dict")
  [ -n "$FUZZ_RUNS" ] && args+=(-runs="$FUZZ_RUNS")
  started=$SECONDS
  log "running $t ${FUZZ_RUNS:+for $FUZZ_RUNS executions, }for at most ${FUZZ_SECONDS}s (log: ${logfile#"$PWD"/})"
  # New inputs go to the first corpus directory (under target/), the seeds are only read.
  "$bin_dir/$t" "${args[@]}" "$corpus" "$FUZZ_DIR/corpus/$t" >"$logfile" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_\(runs\|units\): *\([0-9]*\).*/\2/p' "$logfile" | tail -1)
  [ -n "$runs" ] || runs=$(sed -n 's/^#\([0-9]*\)[[:space:]]*DONE.*/\1/p; s/^Done \([0-9]*\) runs.*/\1/p' "$logfile" | tail -1)
  execs[$t]=${runs:-?}
  took[$t]=$((SECONDS - started))
  if [ $rc -eq 0 ] && [ -n "$FUZZ_RUNS" ] && [ "${runs:-0}" -lt "$FUZZ_RUNS" ]; then
    failed=1
    result[$t]="short: ${runs:-0} of $FUZZ_RUNS executions in ${FUZZ_SECONDS}s"
  elif [ $rc -eq 0 ]; then
    result[$t]=ok
  else
    failed=1
    crash=$(ls -t "$artifacts" 2>/dev/null | head -1)
    result[$t]="FAILED (exit $rc)${crash:+: ${artifacts#"$PWD"/}/$crash}"
    log "$t failed:"
    if grep -q 'panicked at' "$logfile"; then
      sed -n '/panicked at/,/^stack backtrace/p' "$logfile" | grep -v '^stack backtrace' | head -60 | sed 's/^/    /'
    else
      grep -v '^#[0-9]' "$logfile" | tail -25 | sed 's/^/    /'
    fi
    grep -E '^SUMMARY|Test unit written' "$logfile" | tail -2 | sed 's/^/    /'
    [ -n "$crash" ] && log "reproduce: ${bin_dir#"$PWD"/}/$t ${artifacts#"$PWD"/}/$crash"
  fi
done

printf '\nfuzz summary (%s, sanitizer none):\n' "${FUZZ_RUNS:+$FUZZ_RUNS executions per target, at most }${FUZZ_SECONDS}s per target"
printf '  %-14s %14s %8s %10s  %s\n' target execs seconds execs/s result
for t in "${targets[@]}"; do
  rate="?"
  [[ "${execs[$t]}" =~ ^[0-9]+$ ]] && [ "${took[$t]}" -gt 0 ] && rate=$((execs[$t] / took[$t]))
  printf '  %-14s %14s %8s %10s  %s\n' "$t" "${execs[$t]}" "${took[$t]}" "$rate" "${result[$t]}"
done
exit $failed
