# medrobust — the README's commands. `make run` and `make test` each create .venv if missing,
# install the pinned dependencies, and then run.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
# pytest's temp folders and the torch thread count stay predictable on the 2-core machines
export OMP_NUM_THREADS ?= 2

STAMP := $(VENV)/.installed

.PHONY: setup system-deps run test test-fast compile run-local mlflow-ui clean help

help:
	@echo "make run        set up, then run the whole pipeline on the embedded default data (dvc repro)"
	@echo "make test       set up, then run the test suite"
	@echo "make compile    compile the Kubeflow pipeline to pipelines/medrobust_pipeline.yaml"
	@echo "make run-local  run the Kubeflow DAG locally (kfp.local SubprocessRunner)"
	@echo "make mlflow-ui  browse runs and the model registry at http://127.0.0.1:5000"

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	@# torchattacks (the reference for the exactness tests and `medrobust bench attacks`) pins
	@# requests~=2.25 in its metadata, which would break MLflow; its real needs are all installed above
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps torchattacks==3.5.1
	@touch $(STAMP)

setup: $(STAMP)

# The PACS integration test starts a real Orthanc (Debian packages orthanc + orthanc-dicomweb)
system-deps:
	@command -v Orthanc >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q orthanc orthanc-dicomweb >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q orthanc orthanc-dicomweb >/dev/null; }; }
	@command -v Orthanc >/dev/null 2>&1 && echo "Orthanc: $$(command -v Orthanc)"

run: setup
	dvc repro
	@echo; cat reports/evaluation/report.md; echo; echo "decision: $$(cat reports/decision.json | python -c 'import json,sys; d=json.load(sys.stdin); print(d["model_name"], "v"+d["version"], d["validation_status"], "failed:", d["failed_gates"])')"
	@echo "MLflow UI: make mlflow-ui"

test: setup system-deps
	python -m pytest

compile: setup
	medrobust pipeline compile

run-local: setup
	medrobust pipeline run-local

mlflow-ui: setup
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf data/raw data/ingested data/advgen models reports .kfp mlflow.db mlartifacts
