# hostcrypt — build, run and test.
#
# `make run` and `make test` work as root on a fresh Debian machine: each
# installs what it is missing first (see scripts/deps.sh).

GO        ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BIN       := bin
PKGS      := ./...
FUZZTIME  ?= 10s
export PATH := $(dir $(GO)):$(PATH)
# What --version prints; read once from git, or given: make VERSION=1.2.3.
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS   := -X hostcrypt/internal/version.Version=$(VERSION) -X hostcrypt/internal/version.Commit=$(COMMIT)

.PHONY: all build run reset test race fuzz bench lint deps deps-qemu deps-test clean soak

all: build

# bin/hostcryptd and the CLIs, plus bin/hostcryptd-ceph (the same daemon
# with the RADOS backend, rados:// locations) when librados' headers are
# installed; `make build-ceph` installs them first.
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...
	@if [ -e /usr/include/rados/librados.h ]; then \
	  echo "$(GO) build -tags $(CEPH_TAGS) -o $(BIN)/hostcryptd-ceph ./cmd/hostcryptd"; \
	  $(GO) build -ldflags "$(LDFLAGS)" -tags $(CEPH_TAGS) -o $(BIN)/hostcryptd-ceph ./cmd/hostcryptd; \
	else \
	  echo "build: no bin/hostcryptd-ceph: librados-dev is missing (make build-ceph installs it)"; \
	fi

deps:
	@scripts/deps.sh

# Also what booting a guest needs: QEMU, a kernel, busybox (scripts/mkguest.sh).
deps-qemu:
	@scripts/deps.sh qemu

# All that `make test` needs, with one apt-get update: QEMU and a kernel for
# the guest-boot test, Ceph for the RADOS phase.
deps-test:
	@timeout 10m scripts/deps.sh qemu ceph

# The main job: keystored, hostcryptd and a demo VM (scripts/run.sh), on
# var/ or $$VAR; KEYSTORE_LISTEN sets the key store's address.
run: deps build
	@scripts/run.sh

# Removes var/ (or $$VAR); refuses while anything under it is mounted,
# attached to a loop device or served by a running daemon.
reset:
	@scripts/reset.sh

# Everything CI runs: lint, the whole suite under the race detector (the
# guest-boot test needs QEMU and a kernel: deps-test installs them), then
# the RADOS phase (test-ceph). The suite includes a short run of the
# reliability suite (TestSoak in integration/, 5 rounds by default: each of
# its disruptions once); `make soak` is the long run.
test: deps-test lint
	$(GO) test -race -count=1 -timeout 20m $(PKGS)
	@$(MAKE) --no-print-directory test-ceph

race:
	$(GO) test -race -count=1 $(PKGS)

# The reliability suite, long: ROUNDS rounds, each killing hostcryptd or
# keystored with SIGKILL, stopping keystored, or filling or failing the
# storage under fdatasync'd writers and fio, then checking every block
# written (integration/soak_test.go). ROUNDS defaults to 100; SEED repeats
# a run's choices.
soak: deps
	$(GO) test -race -count=1 -v -run '^TestSoak$$' -timeout 180m ./integration/ \
	  -soak.rounds=$(or $(ROUNDS),100) $(if $(SEED),-soak.seed=$(SEED))

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
# `TARGETS="passthrough-sync qemu-luks cmk" make bench-fio`. The targets on
# a Ceph cluster (rbd, rados-none, rados-readonly, rados-readwrite) run when
# named in TARGETS; bench-rados below runs them.
.PHONY: bench-fio
bench-fio:
	@GO=$(GO) bench/run.sh

# The same comparison on a shared store, side by side: a throw-away Ceph
# cluster (scripts/ceph-cluster.sh, destroyed at the end), an unencrypted
# RBD image through librbd (fio --ioengine=rbd, what QEMU gets) and
# bin/hostcryptd-ceph data disks on RADOS with cache None, ReadOnly and
# ReadWrite; the five jobs and 4 KiB random reads and writes at queue
# depth 1, medians of ROUNDS (default 3). UPDATE_DOCS=1 writes the table
# into docs/PERFORMANCE.md's RADOS section. Installs Ceph's packages.
.PHONY: bench-rados
bench-rados:
	@GO=$(GO) TARGETS="$${TARGETS:-rbd rados-none rados-readonly rados-readwrite}" \
	  STATES="$${STATES:-rewritten}" ROUNDS="$${ROUNDS:-3}" DOC_SECTION=rados-table bench/run.sh

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
# package at a time and hostd's RADOS tests, and destroys the cluster, also
# on failure or timeout. Every step is bounded: it fails loudly rather than hangs.
CEPH_TAGS := ceph,pacific
CEPH_PKGS ?= ./storage/rados/... ./storage/location/... ./control/store/ ./cluster/ ./volume/
# The integration tests of hosts sharing a pool (real daemons, mounts).
CEPH_ITESTS ?= TestTwoHosts
.PHONY: build-ceph test-ceph
build-ceph:
	@timeout 5m scripts/deps.sh ceph
	$(GO) build -ldflags "$(LDFLAGS)" -tags $(CEPH_TAGS) -o $(BIN)/hostcryptd-ceph ./cmd/hostcryptd

test-ceph: build-ceph
	$(GO) vet -tags $(CEPH_TAGS) ./storage/... ./cmd/... ./hostd/... ./cluster/... ./control/... ./volume/... ./integration/...
	@dir=$$(mktemp -d "$${TMPDIR:-/var/tmp}/hostcrypt-ceph.XXXXXX") && \
	  timeout -k 30s 5m scripts/ceph-cluster.sh with "$$dir" sh -c '\
	    $(GO) test -race -count=1 -p 1 -timeout 4m -tags $(CEPH_TAGS) $(CEPH_PKGS) && \
	    $(GO) test -race -count=1 -timeout 2m -tags $(CEPH_TAGS) -run OnRADOS ./hostd/ && \
	    $(GO) test -count=1 -timeout 3m -tags $(CEPH_TAGS) -run "$(CEPH_ITESTS)" ./integration/' 
