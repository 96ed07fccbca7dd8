# kubeovn-multivpc — developer entry points. `make help` lists them.
SHELL := /usr/bin/env bash
.DEFAULT_GOAL := help

CARGO ?= cargo
# Directories that hold a committed copy of the generated CRDs.
CRD_DIRS := crds charts/kubeovn-multivpc/crds

.PHONY: help
help: ## List targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-18s %s\n", $$1, $$2}'

.PHONY: build
build: ## Build the three controller binaries (release)
	$(CARGO) build --release -p dns-forwarder -p tunnel-manager -p exip-syncer

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
test: lint unit e2e-test ## Everything: lint, unit tests, then the harness tests on real clusters

# Harness targets (e2e-build, e2e-up, e2e-down, ...) live beside the harness.
include e2e/e2e.mk
