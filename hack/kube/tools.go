//go:build tools

// Package kube pins the Kubernetes release whose control-plane commands
// hack/build-binaries.sh builds; it holds no code of its own.
package kube
