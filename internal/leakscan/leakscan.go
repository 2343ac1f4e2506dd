// Package leakscan looks for plaintext where only ciphertext should be: it
// reports every place under a directory tree where a window of a known
// pattern appears. Tests use it to prove that no written data reaches the
// backing store, the host cache or the temp disk in the clear.
package leakscan

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// Hit is one place where a window of the pattern was found.
type Hit struct {
	Path       string
	FileOffset int64
	PatternOff int
}

// Scan walks root and returns where any window (window >= 16 bytes) of
// pattern occurs in a regular file. It indexes the pattern's 8-byte words at
// 8-aligned offsets: any window of 16 bytes or more contains one of them, so
// every candidate is found and then checked in full.
func Scan(root string, pattern []byte, window int) ([]Hit, error) {
	if window < 16 {
		window = 16
	}
	index := make(map[uint64][]int, len(pattern)/8)
	var filter bloom
	for q := 0; q+8 <= len(pattern); q += 8 {
		w := binary.LittleEndian.Uint64(pattern[q:])
		index[w] = append(index[w], q)
		filter.add(w)
	}
	var hits []Hit
	err := filepath.WalkDir(root, func(path string, de fs.DirEntry, err error) error {
		// A file removed while the walk runs (a live daemon's temporary
		// files) held nothing to find.
		if errors.Is(err, fs.ErrNotExist) && path != root {
			return nil
		}
		if err != nil || !de.Type().IsRegular() {
			return err
		}
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		hits = append(hits, scanBytes(path, data, pattern, index, &filter, window)...)
		return nil
	})
	return hits, err
}

// bloom is a one-hash bit filter over the pattern's words: most words of a
// file are not in the pattern, and a bit test is much cheaper than a map
// lookup at every byte offset.
type bloom [1 << 14]uint64 // 2^20 bits

func bloomBit(w uint64) uint64 { return (w * 0x9e3779b97f4a7c15) >> 44 }

func (b *bloom) add(w uint64) { i := bloomBit(w); b[i>>6] |= 1 << (i & 63) }

func (b *bloom) has(w uint64) bool { i := bloomBit(w); return b[i>>6]&(1<<(i&63)) != 0 }

func scanBytes(path string, data, pattern []byte, index map[uint64][]int, filter *bloom, window int) []Hit {
	var hits []Hit
	seen := map[int64]bool{}
	for f := 0; f+8 <= len(data); f++ {
		w := binary.LittleEndian.Uint64(data[f:])
		if !filter.has(w) {
			continue
		}
		qs, ok := index[w]
		if !ok {
			continue
		}
		for _, q := range qs {
			// The aligned word sits somewhere in the window: try every start
			// that puts it inside one.
			for shift := 0; shift <= window-8; shift++ {
				ps, fs := q-shift, f-shift
				if ps < 0 || fs < 0 || ps+window > len(pattern) || fs+window > len(data) {
					continue
				}
				if bytes.Equal(pattern[ps:ps+window], data[fs:fs+window]) && !seen[int64(fs)] {
					seen[int64(fs)] = true
					hits = append(hits, Hit{Path: path, FileOffset: int64(fs), PatternOff: ps})
				}
			}
		}
	}
	return hits
}
