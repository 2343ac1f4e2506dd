//go:build ceph

package rados

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"hostcrypt/storage"
)

// Leased exclusive locks, kept by the OSD that holds the object (RADOS'
// cls_lock, the locks RBD takes on its images): a lock taken for a lease
// is the OSD's to expire, on the OSD's clock. A client's own clock never
// decides whether a lock is held.

const (
	// lockMustRenew is LIBRADOS_LOCK_FLAG_MUST_RENEW: renew a lock this
	// client holds, and fail (ENOENT) if it no longer does. The older
	// "may renew" flag takes an expired lock again as if nothing happened,
	// which would hide that another client may have held it meanwhile.
	lockMustRenew = byte(1 << 1)
)

// Lock takes the exclusive lock name on the object key (created empty if
// missing) for lease, as this client with cookie; desc is shown to whoever
// lists the lockers. With renew it only extends a lock this client and
// cookie hold, and fails with an error wrapping storage.ErrNotFound when the
// lock expired or was broken meanwhile. Another client holding it is an
// error wrapping storage.ErrConflict.
func (b *Backend) Lock(ctx context.Context, key, name, cookie, desc string, lease time.Duration, renew bool) error {
	if err := b.beginControl(ctx, key, false); err != nil {
		return err
	}
	defer b.done()
	var flags *byte
	if renew {
		f := lockMustRenew
		flags = &f
	}
	ret, err := b.ioctx.LockExclusive(key, name, cookie, desc, lease, flags)
	if err != nil {
		if renew && isErrno(err, syscall.ENOENT) {
			return fmt.Errorf("rados lock %q: this client's lock %q has expired or was broken: %w", key, name, storage.ErrNotFound)
		}
		return b.fail("lock", key, err)
	}
	switch syscall.Errno(-ret) {
	case syscall.EBUSY:
		return fmt.Errorf("rados lock %q: lock %q is held by another client: %w", key, name, storage.ErrConflict)
	case syscall.EEXIST:
		// Held already by this client and cookie, taken without renew.
		return fmt.Errorf("rados lock %q: lock %q is held by this client already; renew it: %w", key, name, storage.ErrConflict)
	}
	return nil
}

// Unlock releases a lock this client and cookie hold. One no longer held
// is no error.
func (b *Backend) Unlock(ctx context.Context, key, name, cookie string) error {
	if err := b.beginControl(ctx, key, false); err != nil {
		return err
	}
	defer b.done()
	if _, err := b.ioctx.Unlock(key, name, cookie); err != nil && !isErrno(err, syscall.ENOENT) {
		return b.fail("unlock", key, err)
	}
	return nil
}

// Locker is a client holding a lock, as the OSD lists it.
type Locker struct {
	// Client is the cluster's name of the client instance ("client.4123").
	Client string
	Cookie string
	// Addr is the instance's address, which a blocklist entry names.
	Addr string
}

// Lockers returns the holders of lock name on the object key whose lease
// the OSD has not seen expire; none (and no error) when the object or the
// lock does not exist.
func (b *Backend) Lockers(ctx context.Context, key, name string) ([]Locker, error) {
	if err := b.beginControl(ctx, key, false); err != nil {
		return nil, err
	}
	defer b.done()
	info, err := b.ioctx.ListLockers(key, name)
	if isErrno(err, syscall.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, b.fail("list lockers", key, err)
	}
	var out []Locker
	for i := 0; i < info.NumLockers && i < len(info.Clients); i++ {
		l := Locker{Client: info.Clients[i]}
		if i < len(info.Cookies) {
			l.Cookie = info.Cookies[i]
		}
		if i < len(info.Addrs) {
			l.Addr = info.Addrs[i]
		}
		out = append(out, l)
	}
	return out, nil
}

// Instance returns the cluster's name of this backend's client instance
// ("client.4123"), as Lockers shows it.
func (b *Backend) Instance() string {
	return fmt.Sprintf("client.%d", b.conn.GetInstanceID())
}

// isErrno tells whether err is the librados error e.
func isErrno(err error, e syscall.Errno) bool {
	if err == nil {
		return false
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		return en == e
	}
	var coded interface{ ErrorCode() int }
	return errors.As(err, &coded) && syscall.Errno(-coded.ErrorCode()) == e
}

// Holders returns the client instances ("client.4123") holding lock name
// on the object key, as the OSD sees them (Lockers without the details).
func (b *Backend) Holders(ctx context.Context, key, name string) ([]string, error) {
	ls, err := b.Lockers(ctx, key, name)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(ls))
	for _, l := range ls {
		out = append(out, l.Client)
	}
	return out, nil
}

// Addr returns this client instance's address, as a blocklist entry names
// it ("127.0.0.1:0/3180225512").
func (b *Backend) Addr() (string, error) {
	if err := b.count(); err != nil {
		return "", err
	}
	defer b.done()
	s, err := b.conn.GetAddrs()
	if err != nil {
		return "", b.fail("addresses", "", err)
	}
	// "[v2:127.0.0.1:0/123,v1:127.0.0.1:0/123]" or "127.0.0.1:0/123".
	a := strings.Split(strings.Trim(s, "[]"), ",")[0]
	for _, p := range []string{"v2:", "v1:", "any:"} {
		a = strings.TrimPrefix(a, p)
	}
	return a, nil
}

// Blocklist fences the client instance at addr (as Addr gives it) for
// expire: from the OSD map that carries the entry on, every OSD refuses its
// operations (ESHUTDOWN), also those it sent before. It returns once this
// client has that map, so that its own next operation reaches each OSD
// with it: only then may it write in the fenced client's place. The cephx
// user needs the monitor capability of "osd blocklist" (profile rbd has
// it).
func (b *Backend) Blocklist(ctx context.Context, addr string, expire time.Duration) error {
	if err := b.count(); err != nil {
		return err
	}
	defer b.done()
	if err := ctx.Err(); err != nil {
		return err
	}
	quoted, err := json.Marshal(addr)
	if err != nil {
		return err
	}
	// The monitor wants expire as a JSON float: 3600 is refused, 3600.0
	// taken.
	cmd := fmt.Appendf(nil, `{"prefix":"osd blocklist","blocklistop":"add","addr":%s,"expire":%.1f}`, quoted, expire.Seconds())
	if _, status, err := b.conn.MonCommand(cmd); err != nil {
		return b.fail("blocklist "+addr+" ("+strings.TrimSpace(status)+")", "", err)
	}
	if err := b.conn.WaitForLatestOSDMap(); err != nil {
		return b.fail("wait for the OSD map", "", err)
	}
	return nil
}
