# bitville-pg-agent. On a fresh Debian machine: `make demo`, then `make test`.
SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local
PG_BIN := $(firstword $(wildcard /usr/lib/postgresql/*/bin/postgres))

.PHONY: all build release deps test demo lint regenerate clean

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# The tests and the demo start a throwaway PostgreSQL server (with pg_stat_statements, which
# Debian ships in the server package). Installed here when missing, as root; otherwise say how.
deps:
	@if [ -z "$(PG_BIN)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing the PostgreSQL server (Debian package postgresql)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else \
	    echo "PostgreSQL server binaries missing: run 'sudo apt-get install postgresql' (or set BITVILLE_TEST_PG_BIN)"; exit 1; \
	  fi; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo missing: install Rust with rustup"; exit 1; }

# Runs every unit and integration test against a real, throwaway PostgreSQL.
test: deps
	$(CARGO) test

# Shows the agent at work against a throwaway PostgreSQL server.
demo: deps
	$(CARGO) test --test demo

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Rewrites etc/postgres-agent.ini.example from the key table in src/config.rs.
regenerate:
	BITVILLE_REGENERATE=1 $(CARGO) test --lib the_shipped_example_lists_every_key

clean:
	$(CARGO) clean
