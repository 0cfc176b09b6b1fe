# The Gantry controller's image: `make image` (needs a Docker engine).
#
# kustomize and helm are built from the same pinned Go modules as the local control plane's
# (hack/kustomize/go.mod, hack/helm/go.mod), so the image renders apps exactly as the tests do.

ARG GO_VERSION=1.26
ARG PYTHON_VERSION=3.11

FROM golang:${GO_VERSION} AS kustomize
WORKDIR /src
COPY hack/kustomize/go.mod hack/kustomize/go.sum hack/kustomize/tools.go ./
# Static, so it runs on the slim Debian image below; GOTOOLCHAIN=local fails loudly on a Go older
# than go.mod asks for instead of downloading another toolchain.
RUN CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath -ldflags "-s -w" -o /out/kustomize \
        sigs.k8s.io/kustomize/kustomize/v5 \
    && /out/kustomize version

FROM golang:${GO_VERSION} AS helm
WORKDIR /src
COPY hack/helm/go.mod hack/helm/go.sum hack/helm/tools.go ./
# The version goes in at link time, as helm's own Makefile does (hack/build-binaries.sh too).
RUN version=$(awk '$1 == "helm.sh/helm/v4" {print $2}' go.mod) \
    && CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$version" -o /out/helm helm.sh/helm/v4/cmd/helm \
    && /out/helm version

FROM python:${PYTHON_VERSION}-slim
# git fetches the apps' repositories; ssh is its transport for ssh:// and git@host: URLs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /tmp/gantry/
COPY controller /tmp/gantry/controller
RUN pip install --no-cache-dir --root-user-action=ignore /tmp/gantry && rm -rf /tmp/gantry
COPY --from=kustomize /out/kustomize /usr/local/bin/kustomize
COPY --from=helm /out/helm /usr/local/bin/helm

# Non-root, with a numeric UID so Kubernetes can verify runAsNonRoot. The root filesystem is meant
# to be read-only (deploy/ mounts emptyDirs at /var/cache/gantry and /tmp): HOME and the git cache
# point there.
RUN groupadd --gid 10001 gantry \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin gantry \
    && mkdir -p /var/cache/gantry && chown 10001:10001 /var/cache/gantry
ENV HOME=/tmp \
    GANTRY_CACHE_DIR=/var/cache/gantry \
    GANTRY_KUSTOMIZE=/usr/local/bin/kustomize \
    GANTRY_HELM=/usr/local/bin/helm \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["gantry-controller"]
