# hostcrypt — build, run and test.
#
# `make run` and `make test` work as root on a fresh Debian machine: each
# installs what it is missing first (see scripts/deps.sh).

GO        ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BIN       := bin
PKGS      := ./...
FUZZTIME  ?= 10s
export PATH := $(dir $(GO)):$(PATH)

.PHONY: all build run test race fuzz bench lint deps clean

all: build

# bin/hostcryptd and the CLIs, plus bin/hostcryptd-ceph (the same daemon
# with the RADOS backend, rados:// locations) when librados' headers are
# installed; `make build-ceph` installs them first.
build:
	$(GO) build -o $(BIN)/ ./cmd/...
	@if [ -e /usr/include/rados/librados.h ]; then \
	  echo "$(GO) build -tags $(CEPH_TAGS) -o $(BIN)/hostcryptd-ceph ./cmd/hostcryptd"; \
	  $(GO) build -tags $(CEPH_TAGS) -o $(BIN)/hostcryptd-ceph ./cmd/hostcryptd; \
	else \
	  echo "build: no bin/hostcryptd-ceph: librados-dev is missing (make build-ceph installs it)"; \
	fi

deps:
	@scripts/deps.sh

# The main job: keystored, hostcryptd and a demo VM (scripts/run.sh).
run: deps build
	@scripts/run.sh

# Everything CI runs: lint, the whole suite under the race detector, then
# the RADOS phase (test-ceph).
test: deps lint
	$(GO) test -race -count=1 -timeout 20m $(PKGS)
	@$(MAKE) --no-print-directory test-ceph

race:
	$(GO) test -race -count=1 $(PKGS)

# A short, bounded run of every fuzz target (FUZZTIME each).
fuzz:
	@scripts/fuzz.sh $(FUZZTIME)

bench:
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

clean:
	rm -rf $(BIN)

# The fio comparison of docs/PERFORMANCE.md: the passthroughs, gocryptfs,
# QEMU's LUKS and the hostcryptd disks side by side, each in today's order
# and on fresh disks (root; installs fio, fuse3, gocryptfs and QEMU's
# storage daemon). TARGETS, STATES, FRESH_TARGETS, ROUNDS, RUNTIME, SIZE,
# WAIT_IDLE and UPDATE_DOCS=1 are read from the environment, e.g.
# `TARGETS="passthrough-sync qemu-luks cmk" make bench-fio`.
.PHONY: bench-fio
bench-fio:
	@GO=$(GO) bench/run.sh

# The host cache's value with remote storage: fio on None, ReadOnly and
# ReadWrite disks behind --storage-latency (LATENCY, default 1ms).
.PHONY: bench-cache
bench-cache:
	@GO=$(GO) bench/cache-latency.sh

# hostcryptd's memory with ten 1 GiB disks under fio (DISKS, SIZE, RUNTIME).
.PHONY: bench-memory
bench-memory:
	@GO=$(GO) bench/memory.sh

# The RADOS backend against a real cluster, as a serial phase of its own:
# installs Ceph's packages (scripts/deps.sh ceph), builds the ceph variant,
# starts a throw-away cluster (scripts/ceph-cluster.sh), runs CEPH_PKGS one
# package at a time, and destroys the cluster, also on failure or timeout.
# Every step is bounded: it fails loudly rather than hangs.
CEPH_TAGS := ceph,pacific
CEPH_PKGS ?= ./storage/rados/... ./storage/location/...
.PHONY: build-ceph test-ceph
build-ceph:
	@timeout 5m scripts/deps.sh ceph
	$(GO) build -tags $(CEPH_TAGS) -o $(BIN)/hostcryptd-ceph ./cmd/hostcryptd

test-ceph: build-ceph
	$(GO) vet -tags $(CEPH_TAGS) ./storage/... ./cmd/... ./hostd/...
	@dir=$$(mktemp -d "$${TMPDIR:-/var/tmp}/hostcrypt-ceph.XXXXXX") && \
	  timeout -k 30s 5m scripts/ceph-cluster.sh with "$$dir" \
	    $(GO) test -race -count=1 -p 1 -timeout 4m -tags $(CEPH_TAGS) $(CEPH_PKGS)
