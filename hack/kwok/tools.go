//go:build tools

// Package kwok pins the release of kwok that hack/build-binaries.sh builds.
package kwok
