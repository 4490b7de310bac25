# hw3: `make test` and `make report` work as the first commands on a fresh clone: both create
# the virtual environment (.venv) and the Jupyter kernel "hw3" first, then do their job.
SHELL := /bin/bash
PYTHON ?= python3
# The oldest Python the project takes: the lower bound of requires-python in pyproject.toml.
PY_MIN := $(shell sed -n 's/^requires-python *= *">= *\([0-9.]*\).*/\1/p' pyproject.toml)
comma := ,
VENV := .venv
BIN := $(VENV)/bin
# Written last by `make setup`: a $(VENV) without it is half-made (an earlier set-up failed) and is rebuilt.
STAMP := $(VENV)/.installed

# The MNIST files: $HWUTILS_DATA_DIR if set, else ../shared/data/mnist when it exists.
HWUTILS_DATA_DIR ?= $(abspath $(wildcard ../shared/data/mnist))
ifneq ($(strip $(HWUTILS_DATA_DIR)),)
export HWUTILS_DATA_DIR
endif

PROFILE ?= quick
PARAMS_FILE ?=
SHOW_CODE ?= 0
# A plan far beyond its profile's own (>= 10x its run-steps, or >= 2 hours here) needs CONFIRM=1.
CONFIRM ?= 0
# The PDF engine: typst (default; pandoc and typst come as wheels with make setup) or xelatex (needs TeX).
PDF_ENGINE ?= typst
# Quiet pip's notes about local package mirrors that are absent on a machine, and setuptools' ~50 lines
# of build warnings (template folders "absent from packages", "editable installation": harmless).
PIP_QUIET := 2> >(grep -v "^WARNING: Location" >&2)
PIP_ENV := PYTHONWARNINGS=ignore::UserWarning
SETUP_FAILED = { echo "make setup: $(1) failed (see above); fix that and run make setup again (a $(VENV) without \
$(STAMP) is rebuilt from scratch; rm -rf $(VENV) does the same)" >&2; exit 1; }

.PHONY: setup test report bench lab strip clean help

help:
	@echo "make test                     run the test suite (creates .venv first)"
	@echo "make report [PROFILE=quick]   execute the notebooks and render report/ (smoke|quick|full|paper)"
	@echo "             [SHOW_CODE=1] [PARAMS_FILE=params.yaml] [PDF_ENGINE=typst|xelatex] [CONFIRM=1]"
	@echo "make bench                    training-speed benchmark (benchmarks/results/)"
	@echo "make lab                      JupyterLab with the project kernel"
	@echo "make setup                    only create .venv and the kernel"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@if [ -e "$(VENV)" ] && [ ! -e "$(STAMP)" ]; then \
	  echo ">> $(VENV) is half-made (an earlier make setup did not finish): removing it and starting again"; \
	  rm -rf -- "$(VENV)"; \
	fi
	@if [ ! -e "$(VENV)" ]; then \
	  version=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
	  if ! $(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < tuple(map(int, "$(or $(PY_MIN),3)".split("."))))' \
	      2>/dev/null; then \
	    echo "make setup: $(PYTHON) is $${version:+Python }$${version:-not found}, this project needs Python $(PY_MIN) or newer \
	(requires-python in pyproject.toml): run make setup PYTHON=/path/to/python$(PY_MIN)" >&2; exit 1; \
	  fi; \
	  echo ">> creating $(VENV) (torch==2.14.1 and torchvision==0.29.1 come from local disk: ~2 min)"; \
	  $(PYTHON) -m venv "$(VENV)" || $(call SETUP_FAILED,$(PYTHON) -m venv $(VENV)); \
	else \
	  echo ">> updating $(VENV) (pyproject.toml changed)"; \
	fi
	@$(BIN)/python -m pip install -q --upgrade pip $(PIP_QUIET) || $(call SETUP_FAILED,upgrading pip)
	@$(PIP_ENV) $(BIN)/python -m pip install -q -e ".[report,test]" $(PIP_QUIET) || $(call SETUP_FAILED,pip install -e .[report$(comma)test])
	@$(BIN)/python -m ipykernel install --sys-prefix --name hw3 --display-name "Python (hw3)" >/dev/null \
	  || $(call SETUP_FAILED,registering the Jupyter kernel hw3)
	@touch $@
	@echo ">> $(VENV) is ready"

test: $(STAMP)
	$(BIN)/python -m pytest

report: $(STAMP)
	HWUTILS_PDF_ENGINE="$(PDF_ENGINE)" $(BIN)/python -m hwutils.report --profile "$(PROFILE)" $(if $(PARAMS_FILE),--params-file "$(PARAMS_FILE)") \
		$(if $(filter 1 yes true,$(SHOW_CODE)),--show-code) $(if $(filter 1 yes true,$(CONFIRM)),--confirm)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_training.py

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

strip: $(STAMP)
	$(BIN)/jupyter nbconvert --clear-output --inplace --ClearMetadataPreprocessor.enabled=True \
		--ClearMetadataPreprocessor.preserve_cell_metadata_mask='[("tags")]' \
		--ClearMetadataPreprocessor.preserve_nb_metadata_mask='[("language_info", "name"), ("kernelspec")]' \
		notebooks/*.ipynb

clean:
	rm -rf report/executed report/html report/pdf report/hw3_report.* results benchmarks/results
