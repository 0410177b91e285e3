# Two commands for a fresh machine: `make run` and `make test`. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TOOLS := .tools
BUN_VERSION := 1.4.4
BUN := $(TOOLS)/node_modules/.bin/bun
CHROMIUM ?= /usr/bin/chromium

# Reflex builds the frontend with bun, installed from the npm registry into .tools/
# (Reflex's own installer downloads from the internet, and its npm path needs Node >= 22).
export PATH := $(CURDIR)/$(TOOLS)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)
export REFLEX_USE_SYSTEM_BUN := 1
export REFLEX_TELEMETRY_ENABLED := false

.PHONY: resync rotate-keys run test test-unit test-integration test-e2e lint format bench chromium clean

# `make run` starts the local Stripe emulator when STRIPE_SECRET_KEY is empty both in the
# environment and in .env; only then does it install requirements-emulator.txt (localstripe,
# GPL-3.0: development and tests only). devtools/run.py decides (`wants_emulator`), reading
# .env as the app does, so the two never disagree.
run: $(VENV)/.installed $(BUN) ## Start the app (local Stripe emulator when no Stripe keys are set)
	@if $(PY) -c 'import sys; from devtools.run import wants_emulator; sys.exit(not wants_emulator())'; then \
		$(MAKE) --no-print-directory $(VENV)/.installed-emulator; fi
	$(PY) -m devtools.run

rotate-keys: $(VENV)/.installed ## Re-encrypt stored Stripe IDs under the first APP_ENCRYPTION_KEYS key
	$(PY) -m subscription_app.rotate_keys

resync: $(VENV)/.installed ## Repair local subscriptions from Stripe (after missed webhooks); ARGS=--dry-run
	$(PY) -m subscription_app.billing.resync $(ARGS)

test: $(VENV)/.installed-dev $(BUN) chromium ## Install test dependencies and run every test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m pytest

test-unit: $(VENV)/.installed-dev
	$(PY) -m pytest tests/unit

test-integration: $(VENV)/.installed-dev
	$(PY) -m pytest tests/integration

test-e2e: $(VENV)/.installed-dev $(BUN) chromium
	$(PY) -m pytest tests/e2e

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# BENCH=webhooks (needs wrk: apt-get install -y wrk; PostgreSQL too when TEST_DATABASE_URL and
# TEST_REDIS_URL are set), subscribe or emulator; ARGS are the benchmark's own options.
BENCH ?= webhooks
bench: $(VENV)/.installed-dev $(BUN) ## Run a benchmark: make bench [BENCH=webhooks] [ARGS="--events 5000"]
	$(PY) -m benchmarks.$(BENCH) $(ARGS)

format: $(VENV)/.installed-dev
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt constraints.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# The local Stripe emulator's packages, kept out of requirements.txt (production).
$(VENV)/.installed-emulator: requirements-emulator.txt constraints.txt | $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-emulator.txt
	touch $@

# requirements-dev.txt includes requirements.txt and requirements-emulator.txt.
$(VENV)/.installed-dev: requirements.txt requirements-emulator.txt requirements-dev.txt constraints.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(VENV)/.installed $(VENV)/.installed-emulator $@

$(BUN):
	npm install --prefix $(TOOLS) --no-save --no-audit --no-fund --loglevel=error bun@$(BUN_VERSION)
	$(BUN) --version

# Playwright cannot download its browsers here; Debian's Chromium works (see README).
# nginx runs the reverse-proxy test of deploy/nginx.conf.template.
chromium:
	@missing=""; \
	[ -x "$(CHROMIUM)" ] || missing="$$missing chromium"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "Installing for the end-to-end tests (Debian packages):$$missing"; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null

clean:
	rm -rf $(VENV) $(TOOLS) .web .states reflex.lock
