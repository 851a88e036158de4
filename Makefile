# kmsplug developer interface. `make run` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_DIR := .run

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv with pinned tools

# The generated modules are committed (every wheel ships them); a test checks they match.
.PHONY: proto
proto: $(VENV)/.installed ## Regenerate python/kmsplug/_proto from proto/ (after editing a .proto)
	$(PY) proto/generate.py python

.PHONY: build
build: $(VENV)/.installed ## Build the Rust extension into .venv (release)
	set -o pipefail; VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release --quiet \
		2>&1 | { grep -v "Requirement already satisfied" || true; }

.PHONY: run
run: build ## Serve on the embedded local key (socket and key under .run/)
	mkdir -p $(RUN_DIR)
	$(VENV)/bin/kmsplug serve --socket unix://$(abspath $(RUN_DIR))/kmsplug.sock \
		--key-file $(abspath $(RUN_DIR))/local.key

.PHONY: test-deps
test-deps: ## Check Go, install SoftHSM; build local-kms and the real peers (cached): what tests/ runs
	tests/e2e/install-deps.sh
	bash tests/hsm/install-deps.sh
	bash tests/aws/build-local-kms.sh
	bash tests/peers/build-peer.sh --all

.PHONY: e2e-deps
e2e-deps: test-deps ## Also build etcd, kube-apiserver, helm (cached by version)
	tests/e2e/build-etcd.sh
	tests/e2e/build-apiserver.sh
	tests/e2e/build-helm.sh

.PHONY: image
image: build ## kmsplug's container image with podman, no registry (base from Debian packages)
	deploy/image/build-image.sh

.PHONY: node-deps
node-deps: build e2e-deps ## podman, containerd (apt); kubelet, crictl (Go, cached); the image
	@if [ "$$KMSPLUG_SKIP_NODE" = 1 ]; then echo "KMSPLUG_SKIP_NODE=1: node tests skipped"; else \
		tests/node/install-deps.sh && tests/node/build-node-tools.sh >/dev/null && \
		{ ! command -v podman >/dev/null || deploy/image/build-image.sh; }; fi

.PHONY: fuzz-deps
fuzz-deps: ## Install cargo-fuzz when a nightly toolchain is present (it needs one)
	@if rustup run nightly rustc --version >/dev/null 2>&1; then \
		command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet; \
	else echo "no nightly toolchain: cargo-fuzz targets will be skipped"; fi

.PHONY: test
test: test-rust test-python test-e2e ## Every test: Rust, Python, real kube-apiserver + etcd, a real node

.PHONY: test-rust
test-rust: ## Rust: unit, proptest and golden-vector tests of both crates
	cargo test --workspace --release --quiet

.PHONY: test-python
test-python: build test-deps fuzz-deps ## Python: all but e2e and node (PYTEST_ARGS='-m "not packaging"': no wheel)
	$(PY) -m pytest benches --benchmark-disable -q -p no:cacheprovider  # the benchmarks still run
	$(PY) -m pytest tests --ignore=tests/e2e --ignore=tests/node $(PYTEST_ARGS)

.PHONY: test-e2e
test-e2e: build e2e-deps node-deps ## tests/e2e and tests/node: real kube-apiserver, etcd, kubelet
	$(PY) -m pytest tests/e2e tests/node $(PYTEST_ARGS)

.PHONY: cluster
cluster: build e2e-deps ## Real etcd + kube-apiserver using `make run`'s socket (run that first)
	mkdir -p $(RUN_DIR)
	$(VENV)/bin/kmsplug config --socket unix://$(abspath $(RUN_DIR))/kmsplug.sock > $(RUN_DIR)/encryption.yaml
	$(PY) tests/e2e/bed.py $(RUN_DIR)/encryption.yaml

.PHONY: cluster-ha
cluster-ha: build e2e-deps ## Three control-plane nodes (etcd cluster, apiservers, one kmsplug each) sharing one KMS
	$(PY) tests/e2e/ha_bed.py $(HA_ARGS)

.PHONY: ha-long
ha-long: build e2e-deps ## HA bed with kmsplug's default probe interval: a 10-minute KMS outage, rotations (~30 min)
	KMSPLUG_HA_PROBE_INTERVAL=30 KMSPLUG_HA_OUTAGE_SECONDS=600 $(PY) -m pytest -s \
		tests/e2e/test_ha_outage.py tests/e2e/test_ha_rotation.py

.PHONY: lint
lint: build ## ruff, mypy, cargo fmt, clippy
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest kmsplug._kmsplug
	cargo fmt --all -- --check
	cd rust/kmsplug-core/fuzz && cargo fmt -- --check
	cargo clippy --workspace --all-targets --release -- -D warnings

.PHONY: format
format: $(VENV)/.installed ## Apply ruff format and cargo fmt
	$(VENV)/bin/ruff format python tests benches
	$(VENV)/bin/ruff check --fix python tests benches
	cargo fmt --all

.PHONY: fuzz
fuzz: build fuzz-deps ## Longer fuzzing: proptest 200k cases, atheris 10 min, cargo-fuzz 2x5 min
	PROPTEST_CASES=200000 cargo test -p kmsplug-core --release --quiet
	mkdir -p .fuzz-corpus
	$(PY) tests/fuzz/fuzz_decrypt.py .fuzz-corpus tests/fuzz/corpus -max_total_time=600 \
		-artifact_prefix=.fuzz-corpus/
	cd rust/kmsplug-core && cargo +nightly fuzz run parse -- -max_total_time=300
	cd rust/kmsplug-core && cargo +nightly fuzz run open -- -max_total_time=300

.PHONY: fault-long
fault-long: build ## The KMS-hang fault test for 10 minutes (make test runs it for 12 s)
	KMSPLUG_FAULT_SECONDS=600 $(PY) -m pytest tests/faults -k hanging -s --timeout=900

.PHONY: bench
bench: build ## Benchmarks: core vs cryptography, server vs an empty gRPC server
	$(PY) -m pytest benches --benchmark-only --benchmark-columns=min,median,mean,ops -p no:cacheprovider
	$(PY) benches/server_throughput.py
	$(PY) benches/alibaba_client.py

.PHONY: bench-cluster
bench-cluster: build e2e-deps ## kube-apiserver latency per provider, kmsplug vs the real peers (~45 min; BENCHMARKS.md)
	$(PY) benches/cluster_bench.py --delay-ms 5 --delay-ms 20 --quota-qps 1000 --rounds 2

.PHONY: conformance-table
conformance-table: build test-deps ## Run `kmsplug conformance` at kmsplug and the real peers; rewrite CONFORMANCE.md's tables (~3 min)
	$(PY) tests/conformance/publish.py --write

.PHONY: bench-scale
bench-scale: build e2e-deps ## 1,000 to 50,000 Secrets, kmsplug vs aesgcm, and a 3-node cold start (BENCHMARKS.md)
	$(PY) benches/scale_bench.py

.PHONY: clean
clean: ## Remove build outputs (keeps .venv)
	cargo clean
	rm -rf .pytest_cache .mypy_cache
