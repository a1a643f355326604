# Two commands do everything on a fresh machine (Python 3.11+):
#   make demo   - create .venv, install, run the main job on a generated archive
#   make test   - create .venv, install, run ruff, mypy and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= 1
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test lint install bench clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,openvino]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mri-triage demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy pipeline models flows

test: lint browser
	$(BIN)/pytest

# The report pages' browser test needs chromium; install it where we can (root with apt), else the
# test skips with its reason. Never fails the build.
browser:
	-@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get install -y -qq chromium >/dev/null 2>&1 && echo "installed chromium"; } \
		|| echo "chromium not installed: the headless-browser report test will skip"

bench: $(STAMP)
	$(BIN)/mri-triage bench models

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
