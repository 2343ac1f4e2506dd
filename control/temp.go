package control

import (
	"context"
	"errors"
	"fmt"

	"hostcrypt/disk"
)

// TempKeys is what a key service offers when it can give every temp disk a
// platform key of its own. Deallocation then destroys that key before the
// temp disk's files, so no key the system still holds can open a copy of
// them made earlier. A Keys without it wraps temp disks with the shared
// platform key (unit tests' fakes).
type TempKeys interface {
	// TempWrapper creates a new platform key and wraps with it.
	TempWrapper(ctx context.Context) (disk.KeyWrapper, error)
	// DestroyTempKey destroys for good the key that kid names, if it is a
	// temp disk's own key; it does nothing for any other key.
	DestroyTempKey(ctx context.Context, kid string) error
}

// ErrKeyGone is returned, wrapped, by a key service's UnwrapKey when the
// wrapping key no longer exists in the key store.
var ErrKeyGone = errors.New("the wrapping key no longer exists")

// tempWrapper returns the wrapper of a new temp disk.
func (h *Host) tempWrapper(ctx context.Context) (disk.KeyWrapper, error) {
	if tk, ok := h.cfg.Keys.(TempKeys); ok {
		w, err := tk.TempWrapper(ctx)
		if err != nil {
			return nil, fmt.Errorf("creating the temp disk's key: %w", err)
		}
		return w, nil
	}
	return h.cfg.Keys, nil
}

// destroyTempKeys destroys the keys the temp disk under prefix is wrapped
// with. A temp disk without metadata has nothing to destroy.
func (h *Host) destroyTempKeys(ctx context.Context, prefix string) error {
	tk, ok := h.cfg.Keys.(TempKeys)
	if !ok {
		return nil
	}
	m, err := disk.ReadMetadata(ctx, h.cfg.HostLocal, prefix)
	if errors.Is(err, disk.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range m.Layers {
		for _, w := range l.WrappedKeys {
			errs = append(errs, tk.DestroyTempKey(ctx, w.KeyID))
		}
	}
	return errors.Join(errs...)
}
