# Sluice's entry points. `make serve` and `make test` work on a new
# Debian/Ubuntu machine: both run scripts/setup.sh first.
CARGO ?= cargo
ARGS ?=

.PHONY: setup serve test test-cluster fuzz lint bench-foundation

setup:
	scripts/setup.sh

## Build and start the server on the default model (127.0.0.1:8080).
serve: setup
	$(CARGO) run --release -p sluice -- serve $(ARGS)

## The whole test suite: formatting, lints, unit and integration tests.
test:
	scripts/setup.sh --test
	$(CARGO) fmt --all -- --check
	python3 scripts/check_layers.py
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(CARGO) test --release --workspace

## Three Sluice processes behind Envoy and the llm-d endpoint picker, with
## Redis for shared quotas, all on loopback (tests/cluster/run.py).
test-cluster:
	scripts/setup.sh --test
	scripts/setup-cluster.sh
	$(CARGO) build --release -p sluice
	python3 tests/cluster/run.py

## Every fuzz target for FUZZ_SECONDS each (fuzz/README.md); stable falls
## back to replaying the corpus.
FUZZ_SECONDS ?= 20
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

## HTTP vs raw-engine throughput at 1, 8 and 32 streams (issue: foundation).
bench-foundation: setup
	benchmarks/foundation/run.sh
