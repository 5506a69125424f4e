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

bench:
	.venv/bin/python bench/scorer_throughput.py
