# `make demo` / `make bench` (included by the root Makefile). See docs/demo.md, docs/BENCHMARKS.md.
DEMO_CLUSTERS := cluster1 cluster2 broker

.PHONY: demo demo-report demo-stop demo-down

# `--bins`, not `--bin multivpc-demo`: a `--bin` filter applies to every `-p`, and would leave the
# controllers unbuilt on a fresh clone.
# DEMO_VM=0: skip the kernel VM (the demo then runs VXLAN on the host's kernel, as it does when
# the VM cannot boot).
DEMO_VM ?= 1

demo: ## Main job: clusters + the three controllers + the seed's GRE tunnel (kernel VM) carrying a ping + a DNS forward, and a report
	$(CARGO) build -q -p dns-forwarder -p tunnel-manager -p exip-syncer -p multivpc-e2e --bins
	@$(MAKE) --no-print-directory e2e-build
	@$(MAKE) --no-print-directory e2e-up CLUSTERS="$(DEMO_CLUSTERS)"
	@if [ "$(DEMO_VM)" = 1 ]; then bash $(E2E_DIR)/scripts/vm.sh up \
	  || echo "multivpc-demo: the kernel VM did not start (the ERROR above): VXLAN on the host's kernel instead of the seed's GRE"; fi
	$(CARGO) run -q -p multivpc-e2e --bin multivpc-demo -- up

demo-report: ## Print the demo's report again (the demo must be up)
	$(CARGO) run -q -p multivpc-e2e --bin multivpc-demo -- report

demo-stop: ## Stop only the demo's controllers (clusters stay up)
	$(CARGO) run -q -p multivpc-e2e --bin multivpc-demo -- stop

demo-down: demo-stop ## Stop the demo's controllers, then every harness cluster, gateway and netns (make e2e-down)
	@$(MAKE) --no-print-directory e2e-down

BENCH_ARGS ?= --profile release --shapes 100x4,1000x4,5000x4,1000x50

.PHONY: bench
bench: ## Benchmarks against the local harness and its kernel VM (release controllers, ~20 min) -> docs/BENCHMARKS.md; no test may run meanwhile
	$(CARGO) build --release -p dns-forwarder -p tunnel-manager -p exip-syncer
	$(CARGO) build -q -p multivpc-e2e --bin multivpc-bench
	@$(MAKE) --no-print-directory e2e-build
	@$(MAKE) --no-print-directory e2e-up CLUSTERS="$(DEMO_CLUSTERS)" VM=1
	$(CARGO) run -q -p multivpc-e2e --bin multivpc-bench -- $(BENCH_ARGS)
