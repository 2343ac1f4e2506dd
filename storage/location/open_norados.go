//go:build !ceph

package location

import (
	"context"
	"fmt"

	"hostcrypt/storage"
	"hostcrypt/storage/rados"
)

// RADOSBuilt tells whether this build can open rados:// locations.
const RADOSBuilt = false

func openRADOS(_ context.Context, cfg rados.Config) (storage.Backend, error) {
	return nil, fmt.Errorf("rados pool %q: %w", cfg.Pool, ErrNoRADOS)
}
