#!/usr/bin/env bash
# Builds Flux's source-controller and kustomize-controller (the peer in `make bench`) from their
# released Go modules, once, into a cache keyed by version:
#   $GANTRY_CACHE/flux-<v>/bin    source-controller kustomize-controller
#   $GANTRY_CACHE/flux-<v>/crds   their CRDs, from config/crd/bases of the same module versions
#   $GANTRY_CACHE/flux-<v>/VERSIONS  one `name version` line per controller
# Each hack/flux/<name>/go.mod pins one release. The releases' own go.mod files carry replace
# directives, which is why `go install github.com/fluxcd/<name>@v` refuses them; the wrappers
# repeat those directives. Only `make bench` calls this; `make test` never needs Flux.
# Usage: hack/build-flux.sh [--print-dir]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${GANTRY_CACHE:-$HOME/.cache/gantry}
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

module_version() { # wrapper-dir module
  awk -v m="$2" '$1 == "require" && $2 == m {print $3; exit} $1 == m && $2 ~ /^v/ {print $2; exit}' "$here/flux/$1/go.mod"
}

source_version=$(module_version source-controller github.com/fluxcd/source-controller)
kustomize_version=$(module_version kustomize-controller github.com/fluxcd/kustomize-controller)
# One directory for the pair, named by both versions (hack/flux/source-controller/go.mod says why they
# can differ).
if [[ $source_version == "$kustomize_version" ]]; then
  flux_dir=$cache/flux-$source_version
else
  flux_dir=$cache/flux-source-$source_version-kustomize-$kustomize_version
fi

if [[ ${1:-} == --print-dir ]]; then
  echo "$flux_dir"
  exit 0
fi
if [[ -x $flux_dir/bin/source-controller && -x $flux_dir/bin/kustomize-controller && -f $flux_dir/VERSIONS ]]; then
  exit 0
fi

mkdir -p "$cache"
# A lock of our own: the control plane's build lock must not wait for this long build.
exec 9>"$cache/.build-flux.lock"
flock 9
if [[ -f $flux_dir/VERSIONS ]]; then exit 0; fi  # built by whoever held the lock before us

started=$SECONDS
tmp=$(mktemp -d "$cache/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/crds"
# A failed build leaves the command and its error in $flux_dir.error, which `python -m bench` prints
# (it then compares with the floor only).
rm -f "$flux_dir.error"
for name in source-controller kustomize-controller; do
  version=$(module_version "$name" "github.com/fluxcd/$name")
  echo "building flux $name $version (cached in $flux_dir) ..." >&2
  command="cd hack/flux/$name && GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -o bin/$name github.com/fluxcd/$name"
  if ! (cd "$here/flux/$name" && go build -trimpath -ldflags "-s -w" -o "$tmp/bin/$name" "github.com/fluxcd/$name") \
      2> >(tee "$tmp/build.log" >&2); then
    { echo "$command"; grep -v '^go: downloading' "$tmp/build.log" | tail -n 20; } > "$flux_dir.error"
    echo "building flux $name failed; see $flux_dir.error" >&2
    exit 1
  fi
  module_dir=$(cd "$here/flux/$name" && go list -m -f '{{.Dir}}' "github.com/fluxcd/$name")
  cp "$module_dir"/config/crd/bases/*.yaml "$tmp/crds/"
  echo "$name $version" >> "$tmp/VERSIONS"
done
chmod -R u+w "$tmp"
rm -rf "$flux_dir"
mv "$tmp" "$flux_dir"
trap - EXIT
echo "built flux controllers in $((SECONDS - started))s: $flux_dir" >&2
