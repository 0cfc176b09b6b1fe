//go:build tools

// Package flux pins the release of fluxcd/source-controller that hack/build-flux.sh builds.
package flux
