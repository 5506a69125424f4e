# Thin aliases for ./cxloop, which creates .venv and installs everything on first use.
.PHONY: run up test smoke lint bench schemas

run up:
	./cxloop up

test:
	./cxloop test

# The subset CI also runs against Tansu, the embedded default broker.
smoke:
	CXLOOP_TEST_KAFKA_BACKEND=tansu ./cxloop test -m smoke

lint:
	./cxloop lint

schemas:
	./cxloop schemas --out schemas

# Writes BENCHMARKS.md. The single-event ingest line needs wrk (Debian's), installed here
# when run as root; without it that line is skipped and says so. The Strimzi Kafka Bridge
# row uses $CXLOOP_BENCH_BRIDGE, else ../shared/peers/strimzi-kafka-bridge-1.0.0 when it
# exists; with neither, that row is skipped and says so. Postgres keeps its data under
# $CXLOOP_BENCH_DATA_DIR (default .cxloop/bench; keep it off tmpfs, the header says which).
BRIDGE_DIR := $(abspath ../shared/peers/strimzi-kafka-bridge-1.0.0)
bench:
	@command -v wrk >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	@if [ -z "$$CXLOOP_BENCH_BRIDGE" ] && [ -d $(BRIDGE_DIR) ]; then \
		export CXLOOP_BENCH_BRIDGE=$(BRIDGE_DIR); fi; ./cxloop bench
