# kubeovn-multivpc — developer entry points. `make help` lists them.
SHELL := /usr/bin/env bash
.DEFAULT_GOAL := help

CARGO ?= cargo
# Directories that hold a committed copy of the generated CRDs (`:plural` = only that one).
CRD_DIRS := crds charts/kubeovn-multivpc/crds charts/kubeovn-multivpc-broker/crds:gatewayexips

.PHONY: help
help: ## List targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-18s %s\n", $$1, $$2}'

.PHONY: build
build: ## Build the three controller binaries and the kubectl plugin (release)
	$(CARGO) build --release -p dns-forwarder -p tunnel-manager -p exip-syncer -p kubectl-multivpc

.PHONY: crds
crds: ## Regenerate crds/ from the Rust types in crates/multivpc-api
	$(CARGO) run -q -p multivpc-api --bin crdgen -- $(CRD_DIRS)

.PHONY: fmt
fmt: ## Format all Rust code
	$(CARGO) fmt --all

.PHONY: lint
lint: ## rustfmt --check and clippy -D warnings on every target
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: unit
unit: ## Tests that need no cluster (harness tests skip, loudly)
	$(CARGO) test --workspace --all-targets

.PHONY: test
test: e2e-host-deps lint unit e2e-test ## Everything: host tools, lint, unit tests, then the harness tests on real clusters

# --- Images, chart and deploy.yaml (docs/helm.md) -------------------------------------------
# IMG=<registry>/<prefix>:<tag> names the three images <registry>/<prefix>/<controller>:<tag>
# (one Dockerfile, one stage per controller). Without a tag: latest.
IMG ?= ghcr.io/kubeovn-multivpc:0.1.0
CONTROLLERS := dns-forwarder tunnel-manager exip-syncer
IMG_NAME = $(lastword $(subst /, ,$(IMG)))
IMG_TAG = $(if $(findstring :,$(IMG_NAME)),$(lastword $(subst :, ,$(IMG_NAME))),latest)
IMG_REGISTRY = $(if $(findstring :,$(IMG_NAME)),$(patsubst %:$(IMG_TAG),%,$(IMG)),$(IMG))
CONTAINER_TOOL ?= docker
PLATFORMS ?= linux/amd64

CHART := charts/kubeovn-multivpc
HELM_VERSION := $(shell sed -n 's/^HELM_VERSION=\([^[:space:]]*\).*/\1/p' e2e/versions.env)
MULTIVPC_CACHE ?= $(HOME)/.cache/kubeovn-multivpc
# The harness's pinned helm (built from the Go module proxy when missing); HELM=helm for your own.
HELM ?= $(MULTIVPC_CACHE)/helm-$(HELM_VERSION)/bin/helm
DEPLOY_NAMESPACE ?= multi-vpc-system
DEPLOY_FILE ?= deploy.yaml
CLUSTER_ID ?=
# More chart values for `make deploy`, e.g. HELM_VALUES="--set tunnel-manager.enabled=false".
HELM_VALUES ?=

.PHONY: docker-build
docker-build: ## Build the three controller images: make docker-build IMG=registry/prefix:tag
	@for c in $(CONTROLLERS); do \
	  echo "$(CONTAINER_TOOL) build --platform $(PLATFORMS) --target $$c -t $(IMG_REGISTRY)/$$c:$(IMG_TAG) ."; \
	  $(CONTAINER_TOOL) build --platform $(PLATFORMS) --target $$c -t $(IMG_REGISTRY)/$$c:$(IMG_TAG) . || exit 1; \
	done

.PHONY: docker-push
docker-push: ## Push the three controller images built by docker-build (same IMG)
	@for c in $(CONTROLLERS); do \
	  echo "$(CONTAINER_TOOL) push $(IMG_REGISTRY)/$$c:$(IMG_TAG)"; \
	  $(CONTAINER_TOOL) push $(IMG_REGISTRY)/$$c:$(IMG_TAG) || exit 1; \
	done

.PHONY: helm-bin
helm-bin:
	@if [ ! -x "$(HELM)" ] && ! command -v "$(HELM)" >/dev/null 2>&1; then bash e2e/scripts/build.sh helm; fi

.PHONY: helm-lint
helm-lint: helm-bin ## helm lint --strict the umbrella chart (every on/off combination) and each subchart
	@for d in true false; do for t in true false; do for e in true false; do \
	  $(HELM) lint --strict --quiet $(CHART) --set dns-forwarder.enabled=$$d \
	    --set tunnel-manager.enabled=$$t --set exip-syncer.enabled=$$e >/dev/null \
	    || { echo "helm lint failed: dns-forwarder=$$d tunnel-manager=$$t exip-syncer=$$e"; \
	         $(HELM) lint --strict $(CHART) --set dns-forwarder.enabled=$$d \
	           --set tunnel-manager.enabled=$$t --set exip-syncer.enabled=$$e; exit 1; }; \
	done; done; done
	$(HELM) lint --strict $(addprefix $(CHART)/charts/,$(CONTROLLERS))
	$(HELM) lint --strict $(BROKER_CHART) --namespace $(BROKER_NAMESPACE)
	@echo "helm lint: 8 combinations, 3 subcharts and the broker chart passed"

.PHONY: deploy
deploy: helm-bin ## Render deploy.yaml (Namespace, CRDs, controllers) from the chart: make deploy IMG=... CLUSTER_ID=...
	@{ printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n' '$(DEPLOY_NAMESPACE)'; \
	   $(HELM) template kubeovn-multivpc $(CHART) --namespace $(DEPLOY_NAMESPACE) --include-crds \
	     --set global.image.registry=$(IMG_REGISTRY) --set global.image.tag=$(IMG_TAG) \
	     $(if $(CLUSTER_ID),--set global.clusterId=$(CLUSTER_ID)) $(HELM_VALUES); } > $(DEPLOY_FILE).tmp
	@mv $(DEPLOY_FILE).tmp $(DEPLOY_FILE)
	@echo "wrote $(DEPLOY_FILE) (images $(IMG_REGISTRY)/<controller>:$(IMG_TAG)); apply with: kubectl apply -f $(DEPLOY_FILE)"

BROKER_CHART := charts/kubeovn-multivpc-broker
# Submariner's broker namespace (subctl deploy-broker's default); the broker chart goes there.
BROKER_NAMESPACE ?= submariner-k8s-broker
BROKER_FILE ?= broker.yaml
# More broker chart values, e.g. BROKER_HELM_VALUES="--set members.allServiceAccounts=false --set members.clusterIds={c1,c2}".
BROKER_HELM_VALUES ?=

.PHONY: deploy-broker
deploy-broker: helm-bin ## Render broker.yaml for the broker cluster (GatewayExIp CRD, Role + RoleBinding for Submariner's members, ownership policy)
	@$(HELM) template kubeovn-multivpc-broker $(BROKER_CHART) --namespace $(BROKER_NAMESPACE) --include-crds \
	   $(BROKER_HELM_VALUES) > $(BROKER_FILE).tmp
	@mv $(BROKER_FILE).tmp $(BROKER_FILE)
	@echo "wrote $(BROKER_FILE) (namespace $(BROKER_NAMESPACE)); apply it on the broker cluster: kubectl apply -f $(BROKER_FILE)"

# Harness targets (e2e-build, e2e-up, e2e-down, ...) live beside the harness.
include e2e/e2e.mk
include e2e/demo.mk
