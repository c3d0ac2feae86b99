# enumwatch — the verbs everybody knows. Every target bootstraps .venv/ itself.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
CHART := charts/enumwatch
# Files the chart ships as copies (its templates read them with .Files.Get); `make manifests`
# refreshes them and tests/unit/test_chart.py checks that they match.
CHART_FILES := manifests/audit/policy.yaml manifests/monitoring/prometheusrule.yaml \
	manifests/monitoring/dashboard.json

.PHONY: help venv controlplane tools node test unit integration lint chart-lint docs manifests sql-goldens demo dev-up dev-down dev-reset cluster-up cluster-down bench clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml devkit/pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python >= 3.11)"; exit 1; }
	@test -x $(PY) || { echo "==> creating $(VENV)/ with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "==> upgrading pip"
	@$(PY) -m pip install --quiet --upgrade pip
	@echo "==> installing enumwatch (editable) with its test extras, and the dev kit (devkit/);"
	@echo "    the first time pip downloads about 100 packages (a few minutes)"
	@# pip draws its progress bar only on a terminal: elsewhere (CI logs) say every 20 s that it works.
	@$(PY) -m pip install --progress-bar on -e '.[test]' -e ./devkit & pip=$$!; n=0; \
	if [ ! -t 1 ]; then while kill -0 $$pip 2>/dev/null; do sleep 1; n=$$((n + 1)); \
	  if [ $$((n % 20)) -eq 0 ] && kill -0 $$pip 2>/dev/null; then echo "    ... pip still installing ($$n s)"; fi; \
	done; fi; wait $$pip
	@touch $(STAMP)
	@echo "==> $(VENV)/ ready: $(VENV)/bin/enumwatch"

venv: $(STAMP) ## create or update .venv/ with the package, its test extras and the dev kit (devkit/)

controlplane: ## build (or reuse) kube-apiserver and etcd from their Go modules
	@bash hack/controlplane/build.sh >/dev/null

tools: ## build (or reuse) helm, promtool and alertmanager from their Go modules (the chart, alert-rule and outputs tests)
	@bash hack/tools/build.sh >/dev/null

node: ## build (or reuse) what cluster-up runs: node packages (as root), Kubernetes node components, CoreDNS, pause
	@if [ "$$(id -u)" = 0 ]; then bash hack/node/install-packages.sh && bash hack/controlplane/build.sh --cluster >/dev/null; \
	else echo "make node: not root, the node tests will skip (cluster-up needs root)"; fi

test: venv controlplane tools node lint ## run every test (lint, unit, integration against a real apiserver, the node as root)
	ENUMWATCH_REQUIRE_INTEGRATION=1 $(PY) -m pytest -W error -p no:cacheprovider $(PYTEST_ARGS)

unit: venv tools ## run the tests that need no control plane
	$(PY) -m pytest -W error -m 'not integration and not e2e and not node' $(PYTEST_ARGS)

integration: venv controlplane tools ## run only the tests against the real control plane
	ENUMWATCH_REQUIRE_INTEGRATION=1 $(PY) -m pytest -W error -m integration $(PYTEST_ARGS)

lint: venv ## ruff, mypy --strict and the import contract (the layers, in pyproject.toml)
	$(VENV)/bin/ruff check operator devkit tests bench hack
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

chart-lint: tools ## helm lint --strict the chart, with its default and its HA values
	@helm="$$(bash hack/tools/build.sh helm 2>/dev/null)" && \
	  "$$helm" lint --strict $(CHART) && "$$helm" lint --strict $(CHART) -f $(CHART)/values-ha.yaml

manifests: venv ## regenerate the CRDs (crds/, the chart's) and the docs' CRD reference (docs/reference.md); refresh the chart's copies
	$(PY) -m enumwatch manifests --output crds --reference docs/reference.md
	$(PY) -m enumwatch manifests --output $(CHART)/crds
	cp $(CHART_FILES) $(CHART)/files/

docs: venv ## build the docs site (docs/, mkdocs.yml) into site/, failing on a broken link or anchor
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

SQL_GOLDEN := tests/unit/golden/sql
sql-goldens: venv ## regenerate the golden queries of `enumwatch sql` (after a change of the query or of sqlglot)
	for d in duckdb spark trino bigquery; do \
	  $(PY) -m enumwatch sql --detector $(SQL_GOLDEN)/detector.yaml --dialect $$d > $(SQL_GOLDEN)/$$d.sql || exit 1; done
	for d in duckdb spark trino bigquery; do \
	  $(PY) -m enumwatch sql --detector $(SQL_GOLDEN)/detector-by-address.yaml --dialect $$d > $(SQL_GOLDEN)/by-address-$$d.sql || exit 1; done
	$(PY) -m enumwatch sql --detector $(SQL_GOLDEN)/detector.yaml --dialect bigquery --source gke-export \
	  --source-table 'my-project.audit.cloudaudit_googleapis_com_data_access' > $(SQL_GOLDEN)/bigquery-gke-export.sql

demo: venv controlplane ## the whole story on a local control plane: scan -> Finding
	$(PY) hack/demo.py

dev-up: venv controlplane ## start the local control plane (+ operator and tailer) in the background, or keep the running one; writes .dev/env
	$(PY) -m enumwatch_devkit up --dir .dev

dev-reset: venv controlplane ## stop the local stack, wipe .dev (its detectors and Findings) and start a new one
	$(PY) -m enumwatch_devkit up --dir .dev --reset

dev-down: ## stop everything dev-up started
	@if [ -x $(PY) ]; then $(PY) -m enumwatch_devkit down --dir .dev; fi

cluster-up: venv ## a cluster with a real node (kubelet, containerd) running enumwatch's image and manifests as users install them; writes .dev/env (root)
	$(PY) -m enumwatch_devkit cluster-up --dir .dev

cluster-down: ## stop everything cluster-up started and clean the host (no process, mount or netns left)
	@if [ -x $(PY) ]; then $(PY) -m enumwatch_devkit cluster-down --dir .dev; fi

bench: venv ## run the benchmarks and print their figures
	$(PY) bench/scan_bench.py
	$(PY) bench/tail_bench.py
	$(PY) bench/operator_bench.py

clean: dev-down ## remove local state (keeps the cached control-plane binaries)
	rm -rf .dev .pytest_cache .mypy_cache .ruff_cache
