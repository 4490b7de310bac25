# hw3: `make test` and `make report` work as the first commands on a fresh clone: both create
# the virtual environment (.venv) and the Jupyter kernel "hw3" first, then do their job.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The MNIST files: $HWUTILS_DATA_DIR if set, else ../shared/data/mnist when it exists.
HWUTILS_DATA_DIR ?= $(abspath $(wildcard ../shared/data/mnist))
ifneq ($(strip $(HWUTILS_DATA_DIR)),)
export HWUTILS_DATA_DIR
endif

PROFILE ?= quick
PARAMS_FILE ?=
SHOW_CODE ?= 0
# Quiet pip's notes about local package mirrors that are absent on a machine.
PIP_QUIET := 2> >(grep -v "^WARNING: Location" >&2)

.PHONY: setup test report bench lab strip clean help

help:
	@echo "make test                     run the test suite (creates .venv first)"
	@echo "make report [PROFILE=quick]   execute the notebooks and render report/ (smoke|quick|full|paper)"
	@echo "             [SHOW_CODE=1] [PARAMS_FILE=params.yaml]"
	@echo "make bench                    training-speed benchmark (benchmarks/results/)"
	@echo "make lab                      JupyterLab with the project kernel"
	@echo "make setup                    only create .venv and the kernel"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo ">> creating $(VENV) (torch==2.14.1 and torchvision==0.29.1 come from local disk: ~2 min)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip $(PIP_QUIET)
	$(BIN)/python -m pip install -q -e ".[report,test]" $(PIP_QUIET)
	$(BIN)/python -m ipykernel install --sys-prefix --name hw3 --display-name "Python (hw3)" >/dev/null
	@touch $@

test: $(STAMP)
	$(BIN)/python -m pytest

report: $(STAMP)
	$(BIN)/python -m hwutils.report --profile "$(PROFILE)" $(if $(PARAMS_FILE),--params-file "$(PARAMS_FILE)") \
		$(if $(filter 1 yes true,$(SHOW_CODE)),--show-code)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_training.py

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

strip: $(STAMP)
	$(BIN)/jupyter nbconvert --clear-output --inplace --ClearMetadataPreprocessor.enabled=True notebooks/*.ipynb

clean:
	rm -rf report/executed report/html report/pdf report/hw3_report.* results benchmarks/results
