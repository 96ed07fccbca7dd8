# e2e harness targets (included by the root Makefile). See e2e/README.md.
E2E_DIR := e2e
CLUSTERS ?= cluster1 cluster2 broker
E2E_CARGO_TEST_ARGS ?=
# VM=1: the kernel VM too (e2e/scripts/vm.sh): built by e2e-build, booted by e2e-up, required by
# e2e-run. e2e-test (make test, CI) sets it unless E2E_TEST_VM=0.
VM ?= 0
E2E_TEST_VM ?= 1

.PHONY: e2e-build e2e-up e2e-down e2e-status e2e-run e2e-test e2e-gateway-up e2e-gateway-down e2e-logs e2e-vm-up e2e-vm-down

e2e-build: ## Build pinned etcd/kube/kwok/helm into $MULTIVPC_CACHE (seconds when warm) + the netns forwarder
	bash $(E2E_DIR)/scripts/build.sh
	$(CARGO) build -q -p multivpc-e2e --bin multivpc-netns-forward --bin multivpc-vm
	@if [ "$(VM)" = 1 ]; then bash $(E2E_DIR)/scripts/vm.sh build; fi

e2e-up: ## Start clusters (CLUSTERS="cluster1 cluster2 broker"); kubeconfigs in e2e/.run/<cluster>.kubeconfig
	bash $(E2E_DIR)/scripts/up.sh $(CLUSTERS)
	@if [ "$(VM)" = 1 ]; then bash $(E2E_DIR)/scripts/vm.sh up; fi

e2e-vm-up: ## Boot the kernel VM (Debian's kernel: GRE, ESP) for gateways placed in it; idempotent
	$(CARGO) build -q -p multivpc-e2e --bin multivpc-netns-forward --bin multivpc-vm
	bash $(E2E_DIR)/scripts/vm.sh up

e2e-vm-down: ## Stop the kernel VM
	bash $(E2E_DIR)/scripts/vm.sh down

e2e-down: ## Stop every harness cluster, gateway and netns (idempotent)
	bash $(E2E_DIR)/scripts/down.sh

e2e-status: ## Show running harness clusters, gateways and netns
	bash $(E2E_DIR)/scripts/status.sh

e2e-gateway-up: ## Add a netns-backed gateway node: make e2e-gateway-up CLUSTER=cluster1 GW=gw1 [PLACEMENT=vm]
	bash $(E2E_DIR)/scripts/netns.sh gateway-up $(CLUSTER) $(GW) $(or $(PLACEMENT),host)

e2e-gateway-down: ## Remove a gateway node and its netns: make e2e-gateway-down CLUSTER=cluster1 GW=gw1
	bash $(E2E_DIR)/scripts/netns.sh gateway-down $(CLUSTER) $(GW)

e2e-run: ## Run the e2e cargo tests against the running harness (a missing harness fails)
	$(CARGO) build -q -p dns-forwarder -p tunnel-manager -p exip-syncer -p kubectl-multivpc
	@out=$${MULTIVPC_E2E_RUN_DIR:-$(E2E_DIR)/.run}/cargo-test.out; mkdir -p "$$(dirname "$$out")"; \
	  set -o pipefail; MULTIVPC_E2E=1 MULTIVPC_E2E_VM=$(VM) $(CARGO) test -p multivpc-e2e --no-fail-fast $(E2E_CARGO_TEST_ARGS) 2>&1 | tee "$$out"

e2e-test: ## e2e-build + e2e-up + e2e-run (with the kernel VM), then e2e-down (also on failure: then the logs and the failures, last)
	@$(MAKE) --no-print-directory e2e-build VM=$(E2E_TEST_VM)
	@rm -f $${MULTIVPC_E2E_RUN_DIR:-$(E2E_DIR)/.run}/cargo-test.out
	@rc=0; $(MAKE) --no-print-directory e2e-up VM=$(E2E_TEST_VM) && $(MAKE) --no-print-directory e2e-run VM=$(E2E_TEST_VM) || rc=$$?; \
	  if [ $$rc -ne 0 ]; then bash $(E2E_DIR)/scripts/dump-logs.sh || true; fi; \
	  $(MAKE) --no-print-directory e2e-down || true; \
	  if [ $$rc -ne 0 ]; then bash $(E2E_DIR)/scripts/test-summary.sh || true; fi; exit $$rc

e2e-logs: ## Print the tail of every harness log
	bash $(E2E_DIR)/scripts/dump-logs.sh

.PHONY: e2e-host-deps
e2e-host-deps: ## Install the host tools the netns tests and the harness use (iproute2, iptables, ping, busybox; root)
	bash -c 'source $(E2E_DIR)/scripts/lib.sh && host_deps'
