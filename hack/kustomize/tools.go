//go:build tools

// Package kustomize pins the release of kustomize that hack/build-binaries.sh builds.
package kustomize
