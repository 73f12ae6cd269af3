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

.PHONY: studio test bench notebooks install install-dev clean

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
	$(PY) -m pytest -q --durations=30

bench: install-dev
	$(PY) -m studio.cli bench

# JupyterLab on notebooks/ from the venv, so its default "python3" kernel is the venv's python (the notebooks'
# kernelspec). Offline: no browser opened, no news or update checks, no extension manager on PyPI.
$(VENV)/.installed-notebooks: $(VENV)/.installed
	$(PIP) install -q -e ".[notebooks]"
	$(VENV)/bin/jupyter labextension disable --level=sys_prefix "@jupyterlab/apputils-extension:announcements"
	touch $@

NOTEBOOK_ARGS ?=
notebooks: $(VENV)/.installed-notebooks
	$(PY) -m jupyterlab --notebook-dir=notebooks --no-browser --LabApp.news_url=None \
		--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate --LabApp.extension_manager=readonly \
		$(if $(filter 0,$(shell id -u)),--allow-root) $(NOTEBOOK_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
