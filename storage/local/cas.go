package local

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"hostcrypt/storage"
)

// Compare-and-swap on metadata files. A file's version is the first eight
// bytes of the SHA-256 of its content (never 0, which stands for no file):
// a writer that read a value compares against that value, so an equal
// value written in between does not conflict, and a different one does.
// The compare and the rename happen under an exclusive flock of the file's
// directory, which WriteMeta and Delete take too, so that no write of
// another process (or another Backend of this one) on the same directory
// slips between them.

// versionOf is the version of a metadata value.
func versionOf(data []byte) storage.Version {
	sum := sha256.Sum256(data)
	v := storage.Version(binary.BigEndian.Uint64(sum[:8]))
	if v == storage.NoVersion {
		v = 1
	}
	return v
}

// ReadMetaVersion reads the file of key and its version.
func (b *Backend) ReadMetaVersion(ctx context.Context, key string) ([]byte, storage.Version, error) {
	data, err := b.ReadMeta(ctx, key)
	if err != nil {
		return nil, storage.NoVersion, err
	}
	return data, versionOf(data), nil
}

// WriteMetaIf replaces the file of key with data if its content is still
// the one ifVersion was read from.
func (b *Backend) WriteMetaIf(ctx context.Context, key string, data []byte, ifVersion storage.Version) (storage.Version, error) {
	if err := b.enter(ctx, key, false); err != nil {
		return storage.NoVersion, err
	}
	defer b.leave()
	err := b.inDir(key, func(dirfd int, name string) error {
		return lockedDir(dirfd, func() error {
			cur, err := currentVersion(dirfd, name, key)
			if err != nil {
				return err
			}
			if cur != ifVersion {
				return fmt.Errorf("%s is no longer at version %x: %w", key, uint64(ifVersion), storage.ErrConflict)
			}
			return writeMeta(dirfd, name, key, data)
		})
	})
	if err != nil {
		return storage.NoVersion, fmt.Errorf("write metadata %s: %w", key, err)
	}
	if err := b.syncDirs(b.root, key); err != nil {
		return storage.NoVersion, fmt.Errorf("write metadata %s: %w", key, err)
	}
	return versionOf(data), nil
}

// currentVersion is the version of the file name in dirfd, or NoVersion.
func currentVersion(dirfd int, name, key string) (storage.Version, error) {
	fd, err := openat(dirfd, name, unix.O_RDONLY|objFlags, 0)
	if err == unix.ENOENT {
		return storage.NoVersion, nil
	}
	if err == unix.ELOOP {
		return storage.NoVersion, notRegular(key, unix.S_IFLNK, false)
	}
	if err != nil {
		return storage.NoVersion, err
	}
	if err := regularFD(fd, key); err != nil {
		if err == errNoObject {
			return storage.NoVersion, nil
		}
		return storage.NoVersion, err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return storage.NoVersion, err
	}
	return versionOf(data), nil
}

// lockedDir runs fn holding an exclusive flock of the directory dirfd.
func lockedDir(dirfd int, fn func() error) error {
	for {
		err := unix.Flock(dirfd, unix.LOCK_EX)
		if err == nil {
			break
		}
		if err != unix.EINTR {
			return err
		}
	}
	defer unix.Flock(dirfd, unix.LOCK_UN)
	return fn()
}
