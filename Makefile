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
# when run as root; without it that line is skipped and says so.
bench:
	@command -v wrk >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	./cxloop bench
