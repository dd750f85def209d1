# Berth: developer entry points. `make` alone lists them.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Debian packages the test suite drives for real (see ../shared/TESTBED.md).
APT_PACKAGES := skopeo podman umoci docker.io docker-registry busybox-static wrk curl \
                uidmap iptables ca-certificates postgresql slapd ldap-utils \
                nginx haproxy rpm dpkg-dev debootstrap fakeroot openssl systemd \
                simplesamlphp php-cli php-xml php-mbstring php-curl chromium apache2-utils

.DEFAULT_GOAL := help
.PHONY: help run test test-slow lint fmt bench bench-s3 bench-azure apt-deps clean dist deb rpm

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,dist]'
	@touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed ## Start Berth on SQLite + filesystem under ./berth-data, on 127.0.0.1:5000
	$(BIN)/berth serve

apt-deps: ## Install the Debian packages the tests use (only when root and something is missing)
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "apt-get install $$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	      --no-install-recommends $$missing; \
	  fi; \
	else echo "not root: skipping apt packages ($(APT_PACKAGES))"; fi

lint: $(VENV)/.test-installed ## ruff and strict mypy
	$(BIN)/ruff check appliance tests bench
	$(BIN)/ruff format --check appliance tests bench
	$(BIN)/mypy

fmt: $(VENV)/.test-installed ## Format and autofix
	$(BIN)/ruff format appliance tests bench
	$(BIN)/ruff check --fix appliance tests bench

test: apt-deps $(VENV)/.test-installed lint ## Install every test dependency and run the whole suite
	$(BIN)/pytest -m "not slow" -p no:cacheprovider

test-slow: apt-deps $(VENV)/.test-installed ## Soak and size tests, e2e on every backend, portable build, package upgrades
	$(BIN)/pytest -m slow -p no:cacheprovider --ignore=tests/e2e
	BERTH_E2E_BACKENDS=all $(BIN)/pytest -p no:cacheprovider tests/e2e

bench: apt-deps $(VENV)/.test-installed ## Berth against the reference registry, side by side
	$(BIN)/python -m bench.run

bench-s3: apt-deps $(VENV)/.test-installed ## Berth on S3 against the reference registry on S3 (SeaweedFS)
	$(BIN)/python -m bench.s3

bench-azure: $(VENV)/.test-installed ## Berth on Azure Blob Storage against the Azure SDK, both on Azurite
	$(BIN)/python -m bench.azure

dist: $(VENV)/.test-installed ## Build dist/berth in a Debian 11 root: runs on glibc 2.31+ (root; cached)
	$(BIN)/python packaging/build.py

deb: dist ## Build dist/berth_<version>_amd64.deb (dpkg-deb)
	$(BIN)/python packaging/package.py deb

rpm: dist ## Build dist/berth-<version>-1.x86_64.rpm (rpmbuild)
	$(BIN)/python packaging/package.py rpm

clean: ## Remove the virtual environment and caches (not ./berth-data)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
