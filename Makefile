# FazAI Gemma Worker — developer and operator entry points.
#   make run    set up .venv (first time: compiles llama.cpp, ~5 min on 2 cores) and serve
#   make test   set up .venv and run the whole test suite (real model)
#   make lint   ruff + mypy (strict)
#   make bench  benchmarks: single stream vs raw llama-cpp-python; N clients vs llama_cpp.server;
#               sessions; the OpenAI API against /ws, grammars, prefix caching; side by side
#               with llama.cpp's llama-server; mixed traffic; cold model loads vs its router; sampling cost
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gemma-worker-installed

.PHONY: install run test lint format bench clean

$(STAMP): pyproject.toml scripts/build-llama.sh scripts/llama-flags.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Reinstalled even when the version is unchanged: a new patch or new flags make a new wheel.
	wheel=$$(scripts/build-llama.sh $(PY)) && $(PY) -m pip install --quiet "$$wheel" \
		&& $(PY) -m pip install --quiet --force-reinstall --no-deps "$$wheel"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/gemma-worker --mode daemon

test: install
	scripts/test-deps.sh
	# llama.cpp's own llama-server: tests/api/test_embeddings.py checks our vectors against it
	scripts/build-llama-server.sh $(PY) >/dev/null
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

bench: install
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) bench/single_stream.py
	$(PY) bench/concurrency.py
	$(PY) bench/concurrency.py --idle 1000
	$(PY) bench/sessions.py
	$(PY) bench/openai_api.py
	$(PY) bench/compare_llama_server.py
	$(PY) bench/mixed_traffic.py
	$(PY) bench/model_load.py
	$(PY) bench/sampling.py
	$(PY) bench/abuse.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
