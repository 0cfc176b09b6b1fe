#!/usr/bin/env bash
# Builds the local control plane's binaries from Go modules, once, into a cache keyed by version:
#   $GANTRY_CACHE/kubernetes-<v>/bin  kube-apiserver kube-controller-manager kube-scheduler kubectl
#   $GANTRY_CACHE/etcd-<v>/bin        etcd
#   $GANTRY_CACHE/kwok-<v>/bin        kwok (and kwok-<v>/stages.yaml, its stage configuration: the
#                                     release's node stages and our pod stages, hack/kwok/stages/;
#                                     kwok-<v>/crd-logs.yaml, the release's CRD of Logs)
#   $GANTRY_CACHE/kustomize-<v>/bin   kustomize
#   $GANTRY_CACHE/helm-<v>/bin        helm (renders Helm charts; the controller finds it next to kustomize)
#   $GANTRY_CACHE/crane-<v>/bin       crane (tests only: `crane registry serve` is the OCI registry
#                                     Helm charts are pushed to and pulled from; not in the image)
# Each hack/<name>/go.mod pins one release (the Kubernetes one replaces every staging module with
# its matching v0.N.P, which is why `go install k8s.io/kubernetes/cmd/...@v` cannot be used).
# A component is rebuilt only when its directory is missing; a build lands atomically (tmp + mv).
# Usage: hack/build-binaries.sh [--print-dirs | kustomize | helm | crane]   (kustomize, helm, crane:
#   build only that one)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${GANTRY_CACHE:-$HOME/.cache/gantry}
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

# The pinned version of a module, read from the wrapper's go.mod so there is one place to bump it.
module_version() { # dir module
  awk -v m="$2" '$1 == m && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' "$here/$1/go.mod"
}

kube_version=$(module_version kube k8s.io/kubernetes)
etcd_version=$(module_version etcd go.etcd.io/etcd/server/v3)
kwok_version=$(module_version kwok sigs.k8s.io/kwok)
kustomize_version=$(module_version kustomize sigs.k8s.io/kustomize/kustomize/v5)
helm_version=$(module_version helm helm.sh/helm/v4)
crane_version=$(module_version crane github.com/google/go-containerregistry)

kube_dir=$cache/kubernetes-$kube_version
etcd_dir=$cache/etcd-$etcd_version
kwok_dir=$cache/kwok-$kwok_version
kustomize_dir=$cache/kustomize-$kustomize_version
helm_dir=$cache/helm-$helm_version
crane_dir=$cache/crane-$crane_version

# kwok's stages: the release's node stage sets, then our pod stages (hack/kwok/stages/README.md says
# why ours replace the release's pod/fast). The file is named by a hash of what goes into it, so
# editing a stage file gives a new one instead of a stale cached one.
kwok_node_stage_sets="node/fast node/heartbeat-with-lease"
kwok_stage_files=("$here"/kwok/stages/*.yaml)
kwok_stages_hash=$({ echo "$kwok_node_stage_sets"; cat "${kwok_stage_files[@]}"; } | sha256sum | cut -c1-16)
kwok_stages=$kwok_dir/stages-$kwok_stages_hash.yaml
# kwok serves pods/log from Logs objects (hack/localcluster.py creates one per pod) but does not
# install their CRD: the release's own, from the module at the pinned version.
kwok_logs_crd=$kwok_dir/crd-logs.yaml

if [[ ${1:-} == --print-dirs ]]; then
  printf 'KUBE_BIN=%s/bin\nETCD_BIN=%s/bin\nKWOK_BIN=%s/bin\nKUSTOMIZE_BIN=%s/bin\nHELM_BIN=%s/bin\nCRANE_BIN=%s/bin\nKUBE_VERSION=%s\nKWOK_STAGES=%s\nKWOK_LOGS_CRD=%s\n' \
    "$kube_dir" "$etcd_dir" "$kwok_dir" "$kustomize_dir" "$helm_dir" "$crane_dir" "$kube_version" "$kwok_stages" "$kwok_logs_crd"
  exit 0
fi

# One build at a time per cache (parallel test runs, a demo started beside a test run).
mkdir -p "$cache"
exec 9>"$cache/.build.lock"
flock 9

build() { # wrapper-dir target-dir output ldflags package...
  # output: a file name under bin/ for a single package whose directory name is not the command's
  # (etcd's main package is ".../server/v3"), or "" to name each binary after its package.
  local wrapper=$1 target=$2 output=$3 ldflags=$4
  shift 4
  if [[ -d $target/bin ]]; then return 0; fi
  local started=$SECONDS tmp
  mkdir -p "$cache"
  tmp=$(mktemp -d "$cache/.build-XXXXXX")
  echo "building $(basename "$target") (cached in $target) ..." >&2
  (cd "$here/$wrapper" && go build -trimpath -ldflags "-s -w $ldflags" -o "$tmp/bin/$output" "$@")
  rm -rf "$target"
  mv "$tmp" "$target"
  echo "built $(basename "$target") in $((SECONDS - started))s" >&2
}

# kubectl version and the apiserver's emulation-version check both read these; they must equal the
# module version exactly, or the binaries report v0.0.0-master and refuse to start.
minor=${kube_version#v1.}
minor=${minor%%.*}
kube_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

build kustomize "$kustomize_dir" kustomize "" sigs.k8s.io/kustomize/kustomize/v5
[[ ${1:-} == kustomize ]] && exit 0
# helm says its version only when told it at link time (its Makefile does the same).
build helm "$helm_dir" helm "-X helm.sh/helm/v4/internal/version.version=$helm_version" helm.sh/helm/v4/cmd/helm
[[ ${1:-} == helm ]] && exit 0
build crane "$crane_dir" crane "-X github.com/google/go-containerregistry/cmd/crane/cmd.Version=$crane_version" \
  github.com/google/go-containerregistry/cmd/crane
[[ ${1:-} == crane ]] && exit 0
build etcd "$etcd_dir" etcd "" go.etcd.io/etcd/server/v3
build kwok "$kwok_dir" "" "-X sigs.k8s.io/kwok/pkg/consts.Version=$kwok_version" sigs.k8s.io/kwok/cmd/kwok
# kwok only acts through stages; out of cluster it has none unless given. Nodes: the release's own
# stage sets (nodes become Ready and keep their leases) from the module at the pinned version,
# rendered with the pinned kustomize. Pods: ours (Running and Ready, or the test faults; deleted
# pods go away).
kwok_module() { (cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok); }
if [[ ! -s $kwok_stages ]]; then
  stage_root=$(kwok_module)/kustomize/stage
  {
    for set in $kwok_node_stage_sets; do
      "$kustomize_dir/bin/kustomize" build "$stage_root/$set"
      echo "---"
    done
    for file in "${kwok_stage_files[@]}"; do
      cat "$file"
      echo "---"
    done
  } > "$kwok_stages.tmp"
  mv "$kwok_stages.tmp" "$kwok_stages"
fi
# hack/localcluster.py starts kwok with kwok-<v>/stages.yaml: point it at the current set (a
# symlink swapped atomically; a running kwok read its stages at start and keeps them).
if [[ $(readlink "$kwok_dir/stages.yaml" 2>/dev/null) != "$(basename "$kwok_stages")" ]]; then
  ln -sfn "$(basename "$kwok_stages")" "$kwok_dir/.stages.yaml.tmp"
  mv -Tf "$kwok_dir/.stages.yaml.tmp" "$kwok_dir/stages.yaml"
fi
if [[ ! -s $kwok_logs_crd ]]; then
  install -m 0644 "$(kwok_module)/kustomize/crd/bases/kwok.x-k8s.io_logs.yaml" "$kwok_logs_crd.tmp"
  mv "$kwok_logs_crd.tmp" "$kwok_logs_crd"
fi
build kube "$kube_dir" "" "$kube_ldflags" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
