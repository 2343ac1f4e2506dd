// Package atomicfile replaces small files atomically and durably: a reader
// sees the old content or the new, never a mix, and once Write returns the
// new content survives a crash.
//
// Both Write and Read work through a descriptor of the file's directory
// (see package dirfd): a symbolic link, a FIFO or a device planted at the
// file's name is refused, never followed, replaced or blocked on.
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"

	"hostcrypt/internal/dirfd"
)

// Write replaces path with data: write a hidden temporary file beside it,
// fsync it, rename it over path, fsync the directory. The file gets perm.
// When path exists and is not a regular file, Write changes nothing and
// returns an error wrapping dirfd.ErrNotRegular.
func Write(path string, data []byte, perm os.FileMode) (err error) {
	d, err := dirfd.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	name := filepath.Base(path)
	// rename would replace a link or a FIFO without following it; but
	// that is not what this program put there, and replacing it would
	// hide it.
	if err := d.CheckRegular(name); err != nil {
		return err
	}
	var r [8]byte
	_, _ = rand.Read(r[:])
	tmp := "." + name + ".tmp-" + hex.EncodeToString(r[:])
	f, err := d.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			d.Remove(tmp)
		}
	}()
	// The umask may have taken bits off perm.
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = d.Rename(tmp, name); err != nil {
		return err
	}
	return d.Sync()
}

// Read returns the content of the regular file path. A missing file is an
// error wrapping fs.ErrNotExist; anything but a regular file (a link
// included) one wrapping dirfd.ErrNotRegular.
func Read(path string) ([]byte, error) {
	d, err := dirfd.Open(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	data, err := d.ReadFile(filepath.Base(path))
	return data, errors.Join(err, d.Close())
}
