# enumwatch — the verbs everybody knows. Every target bootstraps .venv/ itself.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Parallel workers of `make test`, `make unit` and `make integration` (pytest-xdist; each worker
# starts its own control plane). The node tests (one real kubelet per machine) run after, alone.
# 0 (the default): one serial pytest, no worker process. With 3 workers on a 2-core machine, each
# of three fresh-clone runs had one to three tests time out (a different one each time): the
# workers' control planes, operators and tailers oversubscribe 2 cores (docs/developing.md).
TEST_WORKERS ?= 0
PYTEST := $(PY) -m pytest -W error -p no:cacheprovider
PARALLEL := $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) --durations=25
CHART := charts/enumwatch
# Files the chart ships as copies (its templates read them with .Files.Get); `make manifests`
# refreshes them and tests/unit/test_chart.py checks that they match.
CHART_FILES := manifests/audit/policy.yaml manifests/monitoring/prometheusrule.yaml \
	manifests/monitoring/dashboard.json

.PHONY: help venv allocator controlplane tools kafka node test unit asan integration lint chart-lint docs image manifests sql-goldens demo dev-up dev-down dev-reset cluster-up cluster-down bench clean

# need-TOOL: fail at once, in one line, when TOOL is missing (what for and how to get it);
# the first prerequisite of every target that runs TOOL (docs/getting-started.md#prerequisites).
need-%:
	@bash hack/need.sh "$(or $(MAKECMDGOALS),$*)" $*

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml setup.py operator/enumwatch/audit/_typed.c devkit/pyproject.toml
	@bash hack/need.sh venv $(PYTHON) cc
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

venv: $(STAMP) allocator ## create or update .venv/ with the package, its test extras and the dev kit (devkit/)

allocator: ## install (as root, when missing) the allocator enumwatch run uses: mimalloc, Debian's libmimalloc2.0
	@bash hack/install-allocator.sh

controlplane: ## build (or reuse) kube-apiserver and etcd from their Go modules
	@MAKE_TARGET="$(or $(MAKECMDGOALS),controlplane)" bash hack/controlplane/build.sh >/dev/null

tools: ## build (or reuse) helm, promtool and alertmanager from their Go modules (the chart, alert-rule and outputs tests)
	@MAKE_TARGET="$(or $(MAKECMDGOALS),tools)" bash hack/tools/build.sh >/dev/null

kafka: ## resolve (or reuse) the Apache Kafka broker the Kafka / Event Hubs tests and dev-up KAFKA=1 run, from Maven Central
	@MAKE_TARGET="$(or $(MAKECMDGOALS),kafka)" bash hack/kafka/build.sh >/dev/null

node: ## build (or reuse) what cluster-up runs: node packages (as root), Kubernetes node components, CoreDNS, pause
	@if [ "$$(id -u)" = 0 ]; then bash hack/node/install-packages.sh && bash hack/controlplane/build.sh --cluster >/dev/null; \
	else echo "make node: not root, the node tests will skip (cluster-up needs root)"; fi

# `make test`: lint, then every test but the node's and the timing ones (in TEST_WORKERS parallel
# workers if set), then the node tests and the `alone` ones (a time bound that other tests' load would
# break) serially, with nothing else running. A PYTEST_ARGS that selects nothing in one of the two
# runs is not a failure of that run.
FORGIVE_EMPTY = || { rc=$$?; [ $$rc -eq 5 ] && $(if $(strip $(PYTEST_ARGS)),true,false) || exit $$rc; }
test: need-kubectl controlplane tools kafka venv node lint ## run every test (lint, unit, integration against a real apiserver, the node as root)
	ENUMWATCH_REQUIRE_INTEGRATION=1 $(PYTEST) $(PARALLEL) -m 'not node and not alone' $(PYTEST_ARGS) $(FORGIVE_EMPTY)
	ENUMWATCH_REQUIRE_INTEGRATION=1 $(PYTEST) -m 'node or alone' $(PYTEST_ARGS) $(FORGIVE_EMPTY)

unit: tools venv ## run the tests that need no control plane
	$(PYTEST) $(PARALLEL) -m 'not integration and not e2e and not node' $(PYTEST_ARGS)

asan: venv ## run the typed decoder's C (operator/enumwatch/audit/_typed.c) under AddressSanitizer and UBSan against its tests
	$(PYTEST) tests/unit/test_typed_sanitized.py $(PYTEST_ARGS)

integration: need-kubectl controlplane tools kafka venv ## run only the tests against the real control plane
	ENUMWATCH_REQUIRE_INTEGRATION=1 $(PYTEST) $(PARALLEL) -m 'integration and not alone' $(PYTEST_ARGS) $(FORGIVE_EMPTY)
	ENUMWATCH_REQUIRE_INTEGRATION=1 $(PYTEST) -m 'integration and alone' $(PYTEST_ARGS) $(FORGIVE_EMPTY)

lint: venv ## ruff, mypy --strict and the import contract (the layers, in pyproject.toml)
	$(VENV)/bin/ruff check operator devkit tests bench hack
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

chart-lint: tools ## helm lint --strict the chart, with its default and its HA values
	@helm="$$(bash hack/tools/build.sh helm 2>/dev/null)" && \
	  "$$helm" lint --strict $(CHART) && "$$helm" lint --strict $(CHART) -f $(CHART)/values-ha.yaml

manifests: venv ## regenerate the CRDs (crds/, the chart's), the operator's RBAC (manifests, chart, docs) and the docs' CRD reference; refresh the chart's copies
	$(PY) -m enumwatch manifests --output crds --reference docs/reference.md --rbac-root .
	$(PY) -m enumwatch manifests --output $(CHART)/crds
	cp $(CHART_FILES) $(CHART)/files/

image: ## build the image (docker, podman or buildah) as IMAGE=registry/enumwatch:tag and write manifests/overlays/local/ that installs it
	@bash hack/image.sh "$(IMAGE)"

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

demo: need-kubectl controlplane venv ## the whole story on a local control plane: scan -> Finding
	$(PY) hack/demo.py

dev-up: need-kubectl controlplane venv $(if $(filter 1,$(KAFKA)),kafka) ## start the local control plane (+ operator and tailer; KAFKA=1: + a Kafka broker and collect) in the background, or keep the running one; writes .dev/env
	$(PY) -m enumwatch_devkit up --dir .dev $(if $(filter 1,$(KAFKA)),--kafka)

dev-reset: need-kubectl controlplane venv ## stop the local stack, wipe .dev (its detectors and Findings) and start a new one
	$(PY) -m enumwatch_devkit up --dir .dev --reset $(if $(filter 1,$(KAFKA)),--kafka)

dev-down: ## stop everything dev-up started
	@if [ -x $(PY) ]; then $(PY) -m enumwatch_devkit down --dir .dev; fi

cluster-up: need-kubectl venv ## a cluster with a real node (kubelet, containerd) running enumwatch's image and manifests as users install them; writes .dev/env (root)
	$(PY) -m enumwatch_devkit cluster-up --dir .dev

cluster-down: ## stop everything cluster-up started and clean the host (no process, mount or netns left)
	@if [ -x $(PY) ]; then $(PY) -m enumwatch_devkit cluster-down --dir .dev; fi

bench: venv ## run the benchmarks and print their figures
	$(PY) bench/scan_bench.py
	$(PY) bench/tail_bench.py
	$(PY) bench/operator_bench.py
	$(PY) bench/kafka_bench.py

clean: dev-down ## remove local state (keeps the cached control-plane binaries)
	rm -rf .dev .pytest_cache .mypy_cache .ruff_cache
