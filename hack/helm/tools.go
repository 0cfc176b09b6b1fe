//go:build tools

// Package helm pins the release of helm that hack/build-binaries.sh builds (the one the
// controller renders charts with, in the tests and in its image).
package helm
