# Two commands take a fresh machine to a running agent and to a green test run:
#   make run    set up what is missing, then start the agent on the embedded CPU default
#   make test   set up what is missing, then run the gates and the test suite
# Both are idempotent: the second run only checks stamps and starts.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.voiceforge-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
CHATTERBOX_INPUTS := scripts/install-chatterbox.sh requirements/chatterbox.txt requirements/chatterbox-cpu-constraints.txt
CHATTERBOX_STAMP  := $(VENV)/.chatterbox-$(shell cat $(CHATTERBOX_INPUTS) | cksum | cut -d' ' -f1)
HOST    ?= 127.0.0.1
PORT    ?= 8000
PYTEST_ARGS ?=

.PHONY: run test setup test-setup models test-models system-deps lint typecheck bench bench-load bench-workers clean

run: setup models
	$(VENV)/bin/voiceforge serve --host $(HOST) --port $(PORT)

test: setup test-setup models test-models system-deps lint typecheck
	@# pytest exits 5 when it collects nothing: that is a broken suite, not a pass.
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

setup: $(STAMP)

# What only the tests need on top of the agent itself.
test-setup: $(CHATTERBOX_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch is installed first and pinned: 2.13.0 is the local CPU build; anything else
# pulls a multi-GB CUDA build. llama-cpp-python compiles from source (~8 min once,
# then pip's wheel cache): GGML_NATIVE=OFF gives a portable build, because the
# native one segfaults on this machine's CPU in the AMX matrix path.
$(STAMP): pyproject.toml | $(PY)
	@echo "==> installing VoiceForge and its engines into $(VENV) (first time: ~10 min)"
	$(PIP) install --quiet torch==2.13.0
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install --quiet -e '.[embedded,dev]'
	rm -f $(VENV)/.voiceforge-*
	touch $(STAMP)

# chatterbox-tts (tests/chatterbox) next to the CPU torch: its own pins (torch 2.6.0,
# numpy<2) would replace ours, so the script installs it with --no-deps under a
# constraints file; see docs/chatterbox.md. Re-runs when the project is reinstalled.
$(CHATTERBOX_STAMP): $(STAMP) $(CHATTERBOX_INPUTS)
	@echo "==> installing chatterbox-tts into $(VENV) (keeps torch 2.13.0)"
	sh scripts/install-chatterbox.sh $(VENV)
	rm -f $(VENV)/.chatterbox-*
	touch $(CHATTERBOX_STAMP)

# Assemble and verify the default tier's models once (pipeline/tiers.py: Moonshine
# base + Qwen2.5-Coder 1.5B Instruct; VOICEFORGE_TIER picks another).
models: setup
	$(PY) -m pipeline.models

# The suite's engine mechanics run on the fast tier (Whisper tiny.en + Qwen2.5-Coder
# 0.5B); the README path's end-to-end test runs the default tier's.
test-models: setup
	$(PY) -m pipeline.models --tier small

# Packages the tests need from Debian, as command:package pairs: espeak-ng speaks the
# test questions; chromium runs the voice chat page in tests/web (playwright drives
# /usr/bin/chromium); docker-compose validates compose.yaml without an engine (tests/gpu);
# postgresql's server (off PATH, in /usr/lib/postgresql/*/bin) backs tests/records, which
# start and stop their own cluster.
# haproxy balances agent replicas in tests/deploy. kubectl (tests/deploy renders the
# manifests with it) is not in Debian's archive: without it those tests say so and skip.
SYSTEM_DEPS := espeak-ng:espeak-ng chromium:chromium docker-compose:docker-compose haproxy:haproxy

system-deps:
	@# haproxy installs to /usr/sbin, which a user's PATH may lack.
	@missing=""; PATH="$$PATH:/usr/sbin"; for pair in $(SYSTEM_DEPS); do \
	  command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair#*:}"; done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	  missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "==> installing$$missing"; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; fi

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/mypy

bench: setup models system-deps
	mkdir -p out
	$(PY) -m loadtest.latency --turns 20 --json out/latency.json --plot out/latency.png

# Capacity of the bench profile (docs/benchmarks.md); the command starts the server.
# Each capacity series writes its call records to a fresh SQLite file: the default
# one grows with every run, and its size moves the figures (docs/benchmarks.md).
BENCH_DB = $(CURDIR)/out/bench-calls.sqlite3

bench-load: setup system-deps
	mkdir -p out
	rm -f $(BENCH_DB)*
	VOICEFORGE_DATABASE_URL=sqlite:///$(BENCH_DB) \
	VOICEFORGE_MAX_SESSIONS=500 VOICEFORGE_LATENCY_BUDGET_MS=0 \
	  $(PY) -m loadtest --sweep 50,100,150,200,250,300 --duration 60 --ramp 10 --budget-ms 50 \
	  --budget-metric server_overhead_ms --max-input-lag-ms 100 \
	  --json out/loadtest-bench-sweep.json --sweep-plot out/loadtest-bench-sweep.png \
	  --plot out/loadtest-bench-latency.png

# Capacity of 1 worker process and of 2 (serve --workers), one after the other, by
# the same criterion (docs/deploy-k8s.md); run it on a quiet machine.
bench-workers: setup system-deps
	mkdir -p out
	rm -f $(BENCH_DB)*
	VOICEFORGE_DATABASE_URL=sqlite:///$(BENCH_DB) \
	VOICEFORGE_MAX_SESSIONS=500 VOICEFORGE_LATENCY_BUDGET_MS=0 \
	  $(PY) -m loadtest --workers 1 --sweep 100,150,200,250,300 --duration 60 --ramp 10 \
	  --budget-ms 50 --json out/capacity-1-worker.json
	rm -f $(BENCH_DB)*
	VOICEFORGE_DATABASE_URL=sqlite:///$(BENCH_DB) \
	VOICEFORGE_MAX_SESSIONS=500 VOICEFORGE_LATENCY_BUDGET_MS=0 \
	  $(PY) -m loadtest --workers 2 --sweep 100,150,200,250,300,350,400 --duration 60 --ramp 10 \
	  --budget-ms 50 --json out/capacity-2-workers.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
