# pgwebhooks. `make test` and `make demo` set up everything they need on a fresh Debian machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := postgresql-15 postgresql-plpython3-15 postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl

.PHONY: test demo bench lint sql deps venv clean migration-tools

test: deps venv migration-tools
	$(VENV)/bin/ruff check runner plpython tests
	$(VENV)/bin/pytest -q

demo: deps venv
	$(PY) -m pgwebhooks.demo

# Crashes, restarts, connection storms and hostile receivers (a few minutes; not part of `make test`).
test-chaos: deps venv
	$(VENV)/bin/pytest -q -o addopts="-ra" tests/chaos

bench: deps venv
	$(PY) tests/bench/run.py $(BENCH_ARGS)

lint: venv
	$(VENV)/bin/ruff check runner plpython tests

# Regenerate sql/functions/020_plpython.sql from plpython/*.py (a test fails while it is stale).
sql: venv
	$(VENV)/bin/pgwebhooks render-plpython

# Debian packages, installed only when missing (apt-get update first, as root or through sudo).
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		if [ "$$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi

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
	rm -rf $(VENV) .demo .pytest_cache .tools
