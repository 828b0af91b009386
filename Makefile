# Two commands: `make run` (set up + chat with the packaged default model on a local swarm)
# and `make test` (the whole suite); `make check` is the quick offline gate before it (lint, unit
# tests, the API and the assistant over a scripted model). Everything else is an implementation detail.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODEL ?= qwen2.5-coder-0.5b
SERVERS ?= 3
QUANT ?= none
STAMP := $(VENV)/.installed
CHROMIUM := $(VENV)/.chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
API_PORT ?= 8000

EDITOR_HOME := $(or $(COROLLA_HOME),$(HOME)/.cache/corolla)/editor
CODE_SERVER_STAMP := $(EDITOR_HOME)/.stamp

.PHONY: run test check install clean bench code-server
.DEFAULT_GOAL := install

# the VS Code extension: npm ci (when its lock file changes), build, unit tests, corolla.vsix
include editors/vscode/Makefile.inc

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	touch $(STAMP)

# Debian's Chromium for the browser tests (Playwright drives it; no browser download)
$(CHROMIUM):
	command -v chromium >/dev/null || ($(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium)
	mkdir -p $(VENV) && touch $(CHROMIUM)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/corolla models fetch $(MODEL)
	$(BIN)/corolla swarm up $(MODEL) --servers $(SERVERS) --quant $(QUANT) --chat --api-port $(API_PORT)

# code-server 4.139.1 + Node 24 for the VS Code end-to-end tests (tests/editor), cached outside the repo
$(CODE_SERVER_STAMP): scripts/install-code-server.sh
	scripts/install-code-server.sh
	touch $@

code-server: $(CODE_SERVER_STAMP)

# lint, then the unit tests and the scripted-model API and assistant tests (tests/assistant/test_light_install.py
# included) on two workers, offline: an empty model cache and no package index, so a test that needs a real
# model (those are marked slow and run in `make test`) fails instead of fetching one; torch on one thread per
# worker: two workers with a thread per core each wait on each other's threads (on a busy 2-core machine the
# family tests took 330-390 s so, 33-68 s on one thread)
CHECK_TESTS := tests/unit tests/api tests/assistant
check: $(STAMP)
	$(BIN)/ruff check .
	home=$$(mktemp -d) && trap 'rm -rf "$$home"' EXIT && \
	COROLLA_HOME=$$home PIP_NO_INDEX=1 PIP_FIND_LINKS= HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 \
	$(BIN)/python -m pytest -m "not slow" -n 2 -q $(CHECK_TESTS)

test: $(STAMP) $(CHROMIUM) vscode $(CODE_SERVER_STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/decode.py

clean:
	rm -rf $(VENV) build src/*.egg-info
