# The two set-up commands: `make studio` (install + launch) and `make test` (install + all tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch first, pinned to the CPU wheel that lies on this machine's disk; a GPU user installs
# their CUDA torch into the venv first and this step keeps it (it only adds torch if missing).
TORCH  ?= torch==2.13.0
export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1

.PHONY: studio test bench install install-dev clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev,notebooks]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

studio: install
	$(PY) -m studio.cli launch

test: install-dev
	$(PY) -m pytest -q

bench: install-dev
	$(PY) -m studio.cli bench

clean:
	rm -rf $(VENV) runs .pytest_cache
