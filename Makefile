# The two commands the README promises: `make test` and `make demo`.
# Both create .venv on first use and reinstall when setup.cfg or pyproject.toml change.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: browser test test-fast lint fmt typecheck demo demo-protocol venv bench fuzz detection soak capacity wheel clean

venv: $(STAMP)

# Two distributions from one tree: evproto (the protocol library, this directory) and
# evproto-network (network/: the daemons, Kafka, HTTP, the panel), both editable.
$(STAMP): setup.cfg pyproject.toml network/setup.cfg network/setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --config-settings editable_mode=compat -e '.[test]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e './network[broker]'
	@touch $@

# Two test processes, one test file at a time each (a file's tests share its broker and
# fixtures): the end-to-end tests mostly wait on their daemons, so two halve the wall time.
TEST_WORKERS ?= 2

# The protocol core, evproto.aio and a third party's program against them (tests/typecheck)
# pass `mypy --strict` and pyright: the typing the wheel promises with py.typed.
TYPED := evproto/__init__.py evproto/frame.py evproto/link.py evproto/link_table.py evproto/messages.py \
         evproto/errors.py evproto/endpoint.py evproto/backoff.py evproto/idents.py evproto/wire.py evproto/sync.py evproto/aio \
         tests/typecheck

typecheck: $(STAMP)
	$(BIN)/python -m mypy --strict $(TYPED)
	$(BIN)/pyright --pythonpath $(BIN)/python $(TYPED)

# Style: ruff's lint rules and its formatter (settings in pyproject.toml); `make fmt` applies both.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The web console's tests drive Debian's Chromium through Playwright (never a browser
# Playwright downloads itself): installed here when missing (needs root, as CI has).
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@test -x $(CHROMIUM) || { echo "make browser: $(CHROMIUM) is missing and could not be installed" >&2; exit 1; }

test: lint typecheck browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The pure and in-process tests (loopback links and ptys included; no broker, no daemons), with
# a tenth of the property tests' examples: a minute or so. `make test` still runs everything.
test-fast: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow and not network and not browser" \
		--hypothesis-profile fast $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/evcharging up

# The link protocol alone, narrated: two endpoints on loopback, no Kafka.
demo-protocol: $(STAMP)
	$(BIN)/python -m evproto.daemons.demo

# Speed figures for docs/performance.md (ratios against a baseline in the same run).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_codec.py --write docs/performance.md

# Long decoder fuzz run (CI runs 10^5 inputs inside make test).
fuzz: $(STAMP)
	$(BIN)/python benchmarks/fuzz_decoder.py --inputs 2000000

# Kill or pull -> state change on Central's API, 20 trials each (needs root for the cable rows).
detection: $(STAMP)
	$(BIN)/python benchmarks/detection.py --trials 20 --write docs/performance.md

# 15 minutes of evcharging chaos on a 5 CP / 3 driver network, then evcharging audit.
soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py --minutes 15 --write docs/resilience.md

# How many CPs one Central supervises: a sweep to the knee, about 6 minutes (docs/performance.md).
capacity: $(STAMP)
	$(BIN)/python benchmarks/capacity.py --sweep 1000,3000,5000,6000,7000,8000 --duration 30 --write docs/performance.md

wheel: $(STAMP)
	$(BIN)/python -m pip wheel --no-deps -w dist . ./network

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
