//go:build tools

// Package etcd pins the etcd release that hack/build-binaries.sh builds.
package etcd
