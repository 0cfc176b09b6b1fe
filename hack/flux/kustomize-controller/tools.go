//go:build tools

// Package flux pins the release of fluxcd/kustomize-controller that hack/build-flux.sh builds.
package flux
