# driftgate — run `make help` for the targets.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(PKG_VERSION)
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
STATICCHECK_VERSION := v0.8.2
BIN := bin/driftgate

.PHONY: deps help consul nfpm test-package test-systemd build test test-unit test-e2e test-chaos bench bench-micro bench-repair bench-compare bench-tee lint demo package clean fuzz

help:
	@echo "build        build $(BIN) (version $(VERSION))"
	@echo "test         unit, integration and namespace tests with the race detector (root for the namespace tests)"
	@echo "test-e2e     only the multi-host tests in network namespaces (root)"
	@echo "test-chaos   the chaos suite, CHAOS_TRIALS (default 5) trials of each fault (CHAOS_FAULTS: a comma-separated subset),"
	@echo "             in election profile CHAOS_PROFILE (default), report in chaos-report.md (root)"
	@echo "bench        micro-benchmarks with -benchmem, the lease renewal against a consistent read, loss repair against none (bench-repair),"
	@echo "             relay and egress vs socat vs naive Go relay (bench-compare), the end-to-end tee vs samplicator (bench-tee);"
	@echo "             DRIFTGATE_BASELINE_BIN=an older driftgate adds it to both, for before/after in one run"
	@echo "fuzz         fuzz the frame and repair-request decoders and the config loader for FUZZTIME each (default 30s)"
	@echo "lint         gofmt, go vet, staticcheck, go mod tidy check"
	@echo "demo         the agent cluster in network namespaces, live view, kill -9 and step-down measured (root)"
	@echo "demo-relay   the relay alone tees datagrams to receivers in network namespaces (root)"
	@echo "compare-keepalived  keepalived and driftgate failover and split-brain, side by side (root)"
	@echo "package      dist/driftgate_<version>_amd64.deb and dist/driftgate-<version>.x86_64.rpm"
	@echo "test-package build, lintian, rpm -qp, systemd-analyze verify, install and purge (root)"
	@echo "test-systemd the .deb in a Debian 12 container booted by systemd-nspawn: start, reload, stop, kill -9, watchdog, remove (root)"
	@echo "clean        remove build output"

# Debian packages the tests and demo use; installed when missing and root.
DEB_DEPS := iproute2:ip iputils-ping:ping util-linux:taskset prometheus:promtool
deps:
	@missing=; for d in $(DEB_DEPS); do command -v $${d#*:} >/dev/null || missing="$$missing $${d%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing Debian packages:$$missing (apt-get install them, or run as root)"; fi; fi

# Consul v1.14.0 for the tests, built from the module proxy by its own tools
# module (internal/tools/consul) and cached outside the tree, so a fresh
# clone on the same machine does not build it again (the build takes minutes).
CONSUL_VERSION := 1.14.0
CONSUL_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/driftgate/consul-$(CONSUL_VERSION)
consul: bin/consul
bin/consul:
	@mkdir -p bin
	@if ! [ -x "$(CONSUL_CACHE)/consul" ]; then \
	  echo "building Consul $(CONSUL_VERSION) into $(CONSUL_CACHE) (a few minutes, once)"; \
	  mkdir -p "$(CONSUL_CACHE)" && cd internal/tools/consul && $(GO) build -o "$(CONSUL_CACHE)/consul.tmp" github.com/hashicorp/consul && mv "$(CONSUL_CACHE)/consul.tmp" "$(CONSUL_CACHE)/consul"; \
	fi
	cp "$(CONSUL_CACHE)/consul" bin/consul
	@bin/consul version | head -1

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/driftgate

# One command for everything a change must pass. Namespace tests need root;
# CI sets DRIFTGATE_REQUIRE_PRIVILEGED=1 so they fail rather than skip.
test: deps consul
	$(GO) test -race -count=1 -timeout 25m ./...

test-unit:
	$(GO) test -race -count=1 ./gateway/... ./cmd/...

test-e2e: deps
	$(GO) test -race -count=1 -v ./e2e/...

bench: bench-micro bench-repair bench-compare bench-tee

bench-micro: consul
	$(GO) test -run '^$$' -bench . -benchmem -count=1 ./gateway/...
	$(GO) test -run '^$$' -bench LeaseRenewal -benchtime 200x -count=1 ./consul
	$(GO) test -run '^$$' -bench FenceExtend -benchtime 2000x -count=1 ./netvip

# Loss repair on the namespace LAN: drops on the bridge towards receivers,
# repair off (the anchor) and on, side by side in one table.
bench-repair: deps
	@mkdir -p bin
	@$(GO) test -count=1 -run '^TestRepairNamespaces$$' -v ./e2e/ > bin/bench-repair.log 2>&1; rc=$$?; \
	  grep -E '^\s+\||repair on the namespace|^(ok|FAIL|---)|Error|FAIL' bin/bench-repair.log; exit $$rc

# The side-by-side comparison wants socat (apt-get install socat) and taskset
# (util-linux); it pins the relay under test to CPU 1 and the load generator
# and sink to CPU 0. Run it on an otherwise idle machine.
bench-compare: build
	command -v socat >/dev/null || (apt-get install -y socat)
	$(GO) test -c -o bin/relaybench.test ./internal/relaybench/
	DRIFTGATE_BENCH=1 DRIFTGATE_BIN=$(CURDIR)/$(BIN) taskset -c 0 bin/relaybench.test -test.count=1 -test.timeout 30m -test.run TestRelayComparison -test.v

# The end-to-end tee, what users run: relay + the primary's receiver + the
# other host's receiver, each delivering to an application, against
# samplicator sending to the same two applications (if `samplicate` is on
# PATH, or SAMPLICATE names it; DRIFTGATE_BASELINE_BIN adds an older build).
bench-tee: build
	$(GO) test -c -o bin/relaybench.test ./internal/relaybench/
	DRIFTGATE_BENCH=1 DRIFTGATE_BIN=$(CURDIR)/$(BIN) taskset -c 0 bin/relaybench.test -test.count=1 -test.timeout 30m -test.run TestTeeEndToEnd -test.v

FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./gateway/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeNack$$' -fuzztime $(FUZZTIME) ./gateway/
	$(GO) test -run '^$$' -fuzz FuzzLoad -fuzztime $(FUZZTIME) ./internal/config/

lint:
	@fmt=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$fmt" ]; then echo "gofmt needed:"; echo "$$fmt"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	$(GO) mod tidy -diff

# The agent demo: three Consul servers and two driftgate servers in network
# namespaces, a live view, a kill -9 and a step-down, measured. Root.
demo: deps consul build
	$(GO) test -c -o bin/e2e.test ./e2e/
	cd e2e && DRIFTGATE_DEMO=1 ../bin/e2e.test -test.run '^TestDemo$$' -test.v -test.timeout 10m

# The chaos suite, long: every fault CHAOS_TRIALS times in random order
# (CHAOS_SEED repeats a run), invariants checked, the report table written
# to chaos-report.md and the agents' logs and the timeline to chaos-logs/.
# `make test` runs each fault once. Root.
CHAOS_TRIALS ?= 5
CHAOS_NODES ?= 2
CHAOS_PROFILE ?= default
test-chaos: deps consul
	$(GO) test -c -o bin/e2e.test ./e2e/
	cd e2e && DRIFTGATE_CHAOS_TRIALS=$(CHAOS_TRIALS) DRIFTGATE_CHAOS_NODES=$(CHAOS_NODES) DRIFTGATE_CHAOS_SEED=$(CHAOS_SEED) \
		DRIFTGATE_CHAOS_PROFILE=$(CHAOS_PROFILE) DRIFTGATE_CHAOS_FAULTS="$(CHAOS_FAULTS)" \
		DRIFTGATE_CHAOS_REPORT=$(CURDIR)/chaos-report.md DRIFTGATE_CHAOS_LOGS=$(CURDIR)/chaos-logs \
		../bin/e2e.test -test.run '^TestChaos$$' -test.v -test.timeout 240m

# keepalived (VRRP) and driftgate measured side by side in one topology:
# failover on kill -9 and on clean stop, VIP overlap, LAN partition. Root.
compare-keepalived: deps consul build
	command -v keepalived >/dev/null || (apt-get update -qq && apt-get install -y -qq keepalived)
	$(GO) test -c -o bin/e2e.test ./e2e/
	cd e2e && DRIFTGATE_COMPARE=1 ../bin/e2e.test -test.run '^TestCompareKeepalived$$' -test.v -test.timeout 20m

# The relay alone: a relay tees datagrams to receivers in three namespaces.
demo-relay: deps build
	./e2e/demo-relay.sh $(BIN)

# Packages. The version is the one `driftgate version` prints: a tag vX.Y.Z
# gives X.Y.Z, otherwise 0.0.0~dev.<commits>.g<hash> (sorts before any release).
PKG_VERSION := $(shell v=$$(git describe --tags --match 'v[0-9]*' --exact-match 2>/dev/null | sed 's/^v//'); if [ -n "$$v" ]; then echo $$v; else echo 0.0.0~dev.$$(git rev-list --count HEAD 2>/dev/null || echo 0).g$$(git rev-parse --short HEAD 2>/dev/null || echo 0); fi)
NFPM_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/driftgate/nfpm-v2.45.2
nfpm: $(NFPM_CACHE)/nfpm
$(NFPM_CACHE)/nfpm:
	mkdir -p $(NFPM_CACHE)
	cd internal/tools/nfpm && $(GO) build -o $(NFPM_CACHE)/nfpm github.com/goreleaser/nfpm/v2/cmd/nfpm

package: $(NFPM_CACHE)/nfpm
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w -X main.version=$(PKG_VERSION) -X main.commit=$(COMMIT)' -o dist/bin/driftgate ./cmd/driftgate
	mkdir -p dist
	sed "s/@VERSION@/$(PKG_VERSION)/; s/@DATE@/$$(date -R -d @$$(git log -1 --format=%ct 2>/dev/null || date +%s))/" packaging/changelog.Debian | gzip -9n > dist/changelog.Debian.gz
	VERSION=$(PKG_VERSION) $(NFPM_CACHE)/nfpm package --config packaging/nfpm.yaml --packager deb --target dist/
	VERSION=$(PKG_VERSION) $(NFPM_CACHE)/nfpm package --config packaging/nfpm.yaml --packager rpm --target dist/
	@# RPM release 1 is in the package; the file is named by version alone.
	mv dist/driftgate-$(PKG_VERSION)-1.x86_64.rpm dist/driftgate-$(PKG_VERSION).x86_64.rpm
	@ls -l dist/*.deb dist/*.rpm

# Build, lint, inspect, install and purge the packages (root; CI runs it).
test-package: package
	./packaging/test-package.sh $(PKG_VERSION)

# The packages under a real systemd: a cached Debian 12 root booted with
# systemd-nspawn, the .deb installed and the agent run as an operator would
# (root; apt-get install debootstrap systemd-container; CI runs it).
test-systemd: package consul
	./packaging/test-systemd.sh $(PKG_VERSION) $(CURDIR)/bin/consul

clean:
	rm -rf bin dist
