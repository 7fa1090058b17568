# virtwire: QEMU's network data path as gRPC microservices.
#   make run    bring up the default LAN on loopback and show traffic
#   make test   install everything needed into .venv (and Debian packages), then test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROTOS := $(wildcard protos/virtwire/v1/*.proto)
GEN_DIR := services
# Debian packages the real-peer tests and benchmarks use (libpcap0.8: pcap-filter
# matches, virtwire.net.match).
DEBS := qemu-system-x86 linux-image-amd64 busybox-static iproute2 iperf3 tcpdump \
        tshark vde2 cpio kmod docker.io debootstrap docker-compose libpcap0.8 graphviz prometheus
PYTEST_ARGS ?=

BUF_VERSION := 1.75.0
BUF := .cache/buf/node_modules/.bin/buf

.PHONY: install debs venv link protos protos-check proto-lint lint test run bench image clean fuzz

install: venv debs link

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,docker]'
	touch $@

venv: $(VENV)/.installed

# A link to the venv's virtwire in ~/.local/bin, which most shells' PATH holds; a
# file there that is not a link is left alone.
BIN_DIR ?= $(HOME)/.local/bin
link: venv
	@script="$(abspath $(VENV))/bin/virtwire"; dest="$(BIN_DIR)/virtwire"; \
	if [ -e "$$dest" ] && [ ! -L "$$dest" ]; then \
	    echo "$$dest is not a link: left alone; run $$script, or '. $(VENV)/bin/activate'"; \
	elif mkdir -p "$(BIN_DIR)" && ln -sfn "$$script" "$$dest"; then \
	    echo "virtwire: linked $$dest -> $$script"; \
	    case ":$$PATH:" in *":$(BIN_DIR):"*) ;; *) \
	    echo "$(BIN_DIR) is not on PATH: add it (e.g. in ~/.profile):" \
	        "export PATH=\"$(BIN_DIR):\$$PATH\"" ;; esac; \
	else echo "could not link $$dest: run $$script, or '. $(VENV)/bin/activate'"; fi

# Installs the Debian packages when root (CI runs as root); otherwise says which
# are missing so the tests that need them skip with that reason.
debs:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q 'install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q --no-install-recommends $$missing; \
	else \
	    echo "not root: missing Debian packages ($$missing); tests needing them will skip"; \
	fi

# Regenerate the protobuf/gRPC code into services/virtwire/v1.
protos: venv
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN_DIR) --pyi_out=$(GEN_DIR) \
	    --grpc_python_out=$(GEN_DIR) $(PROTOS)

# Fails when the committed generated code differs from what the protos produce.
protos-check: venv
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$$tmp --pyi_out=$$tmp \
	    --grpc_python_out=$$tmp $(PROTOS) && \
	for f in $$tmp/virtwire/v1/*; do \
	    if ! cmp -s $$f $(GEN_DIR)/virtwire/v1/$$(basename $$f); then \
	        echo "generated code is stale: $(GEN_DIR)/virtwire/v1/$$(basename $$f) (run 'make protos')"; \
	        exit 1; fi; done; \
	for f in $(GEN_DIR)/virtwire/v1/*_pb2*.py*; do \
	    [ -e $$tmp/virtwire/v1/$$(basename $$f) ] || { echo "orphan generated file: $$f"; exit 1; }; \
	done; echo "generated code matches the protos"

# buf's STANDARD and COMMENTS rules (protos/buf.yaml), with buf from the npm registry.
$(BUF):
	npm install --silent --no-audit --no-fund --prefix .cache/buf @bufbuild/buf@$(BUF_VERSION)

proto-lint:
	@if command -v npm >/dev/null; then $(MAKE) -s $(BUF) && cd protos && ../$(BUF) lint \
	    && echo "buf lint: protos follow STANDARD and COMMENTS"; \
	else echo "npm not found: skipping buf lint of the protos"; fi

lint: venv proto-lint
	$(VENV)/bin/ruff check services tests bench deploy
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

test: install protos-check lint
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

# A longer e1000 fuzz campaign than the test suite's 100k operations: random guest
# operations for VIRTWIRE_FUZZ_SECONDS (default 300); prints ops/s and the slowest op.
fuzz: venv
	VIRTWIRE_FUZZ_SECONDS=$${VIRTWIRE_FUZZ_SECONDS:-300} $(VENV)/bin/pytest -q -s \
	    --timeout=0 tests/test_e1000_fuzz.py

# Ctrl-C stops the demo, which tears its LAN down and exits 130: not a failure.
# make passes a SIGTERM only to the recipe's shell: setpriv hands it on to the demo.
PDEATHSIG = $(if $(shell command -v setpriv),setpriv --pdeathsig TERM)
run: install
	@$(PDEATHSIG) $(VENV)/bin/virtwire demo $(RUN_ARGS) || [ $$? -eq 130 ]

bench: install
	$(PY) bench/run.py $(BENCH_ARGS)

# The container image virtwire:<version> (deploy/Dockerfile), from a debootstrap base.
image: install
	$(PY) deploy/image.py build

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
