//go:build ceph

package location

import (
	"context"

	"hostcrypt/storage"
	"hostcrypt/storage/rados"
)

// RADOSBuilt tells whether this build can open rados:// locations.
const RADOSBuilt = true

func openRADOS(ctx context.Context, cfg rados.Config) (storage.Backend, error) {
	return rados.Open(ctx, cfg)
}
