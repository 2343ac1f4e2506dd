// Package integration holds the end-to-end tests: they build the real
// binaries once per run (harness_test.go) and drive keystored, hostcryptd and
// the hostcrypt CLI as a user would, with real FUSE mounts, loop devices,
// file systems and TLS.
package integration
