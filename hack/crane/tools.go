//go:build tools

// Package crane pins the release of crane that hack/build-binaries.sh builds. Tests only: its
// `crane registry serve` is the OCI registry the Helm OCI tests push charts to and pull them from.
package crane
