# Gantry: every target installs what it needs (a venv in .venv, Go-built binaries cached in
# ~/.cache/gantry), so `make demo` and `make test` work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KUBECONFIG ?= $(CURDIR)/.cluster/kubeconfig
export PATH := $(CURDIR)/.cluster/bin:$(PATH)

.PHONY: all venv chromium binaries cluster-up cluster-down cluster-status test unit e2e demo run bench clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(STAMP)

# The browser tests drive Debian's Chromium (Playwright's own browser download is not used). As root
# (CI) it is installed here; recommends are left out, as they would pull in and upgrade systemd.
CHROMIUM := /usr/bin/chromium
chromium:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; \
	  else \
	    echo "the browser tests need $(CHROMIUM): sudo apt-get install chromium" >&2; exit 1; \
	  fi; }

binaries:
	bash hack/build-binaries.sh

cluster-up: $(STAMP)
	$(PY) hack/localcluster.py up

cluster-down:
	@if [ -x $(PY) ]; then $(PY) hack/localcluster.py down; else $(PYTHON) hack/localcluster.py down; fi

cluster-status: $(STAMP)
	$(PY) hack/localcluster.py status

# All tests: unit tests and the end-to-end ones (the session fixture brings the local control
# plane up, or uses $$KUBECONFIG when set). pytest's exit code 5 (no tests collected) fails too.
test: $(STAMP) chromium binaries
	$(PY) -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

e2e: $(STAMP) chromium binaries
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

# The local control plane, the controller and the example app served from a loopback git repo;
# left running (make cluster-down stops all of it).
demo: cluster-up
	$(PY) hack/demo.py

# The controller in the foreground against $$KUBECONFIG (default: the local control plane).
# kubectl, kustomize and helm come from the build cache, not .cluster/bin, so this works against any
# cluster (a kind one too), also before `make cluster-up` or after `make cluster-down`.
run: $(STAMP) binaries
	@eval "$$(bash hack/build-binaries.sh --print-dirs)" && export KUBECONFIG=$(KUBECONFIG) && \
	  "$$KUBE_BIN/kubectl" apply -f crds/ && \
	  "$$KUBE_BIN/kubectl" create namespace gantry --dry-run=client -o yaml | "$$KUBE_BIN/kubectl" apply -f - && \
	  exec $(VENV)/bin/gantry-controller --kubeconfig $(KUBECONFIG) --namespace gantry --kustomize "$$KUSTOMIZE_BIN/kustomize" \
	    --helm "$$HELM_BIN/helm"

# Benchmarks (bench/README.md): Gantry against plain `kubectl apply --server-side` and Flux, on the
# local control plane (used when running, else started and stopped again). Not part of `make test`.
# BENCH_ARGS=--quick for a few minutes' run. Flux is built once by hack/build-flux.sh (~15 min); if
# that fails, the benchmarks still run against the floor and print the build's error.
bench: $(STAMP) chromium binaries
	bash hack/build-flux.sh || true
	$(PY) -m bench $(BENCH_ARGS)

# The controller's image and an install into a kind cluster, for users with a Docker engine (our CI
# machines have none). kind-deploy installs cluster mode; DEPLOY=deploy/namespaced for the other.
.PHONY: image kind-deploy
KIND_CLUSTER ?= gantry
DEPLOY ?= deploy/

image:
	docker build -t gantry:latest .

kind-deploy:
	kind load docker-image gantry:latest --name $(KIND_CLUSTER)
	kubeconfig=$$(mktemp) && trap 'rm -f "$$kubeconfig"' EXIT && \
	  kind get kubeconfig --name $(KIND_CLUSTER) > "$$kubeconfig" && \
	  kubectl --kubeconfig "$$kubeconfig" apply -k $(DEPLOY)

clean: cluster-down
	rm -rf $(VENV) build *.egg-info
