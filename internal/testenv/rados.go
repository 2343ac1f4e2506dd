package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"

	"hostcrypt/storage/location"
)

// RADOSEnv names the test cluster's location, as scripts/ceph-cluster.sh
// exports it (make test-ceph starts one).
const RADOSEnv = "HOSTCRYPT_RADOS"

// RADOS returns the test cluster's location in a namespace of its own,
// named prefix and a random suffix; without a cluster t is skipped, or
// fails in CI.
func RADOS(t testing.TB, prefix string) location.Location {
	t.Helper()
	s := os.Getenv(RADOSEnv)
	if s == "" {
		if InCI() {
			t.Fatalf("CI is set but %s is not: the RADOS tests need a cluster (make test-ceph starts one)", RADOSEnv)
		}
		t.Skipf("no Ceph cluster: %s is unset", RADOSEnv)
	}
	l, err := location.Parse(s)
	if err != nil || l.RADOS == nil {
		t.Fatalf("%s=%q is no rados:// location: %v", RADOSEnv, s, err)
	}
	cfg := *l.RADOS
	ns := make([]byte, 5)
	rand.Read(ns)
	cfg.Namespace = prefix + hex.EncodeToString(ns)
	l.RADOS = &cfg
	return l
}
