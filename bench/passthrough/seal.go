package main

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/chacha20poly1305"
)

// sealBlock is the size of the blocks a --seal passthrough seals: an
// encrypting daemon's block (hostcrypt's is 4 KiB).
const sealBlock = 4096

// sealer does, for each 4 KiB block a request carries, the cipher work an
// encrypting daemon must do, and throws the result away: the data written
// and read stays plaintext. It measures what the cipher alone costs a FUSE
// daemon on the machine, apart from everything else an encrypting daemon
// does (block maps, nonces kept, metadata).
//
// A written block is sealed under a fresh random nonce (AES-256-GCM; with
// "double" also XChaCha20-Poly1305 over the first layer's output). A read
// block opens a sealed block kept from the start: the same work as opening
// a real one, authentication included.
type sealer struct {
	layers []cipher.AEAD
	// sealed is a block sealed by every layer, each layer's nonce first,
	// which a read opens back down to the plaintext.
	sealed []byte
	bufs   sync.Pool
	// seals and opens count the cipher calls done for requests.
	seals, opens atomic.Int64
}

// checkSeal says whether mode is a --seal value.
func checkSeal(mode string) error {
	switch mode {
	case "none", "aes", "double":
		return nil
	}
	return fmt.Errorf("--seal %q: want none, aes or double", mode)
}

func newSealer(mode string) (*sealer, error) {
	if err := checkSeal(mode); err != nil {
		return nil, err
	}
	if mode == "none" {
		return nil, nil
	}
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return nil, err
	}
	defer clear(key[:])
	s := &sealer{}
	b, err := aes.NewCipher(key[:])
	if err != nil {
		return nil, err
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		return nil, err
	}
	s.layers = append(s.layers, g)
	if mode == "double" {
		x, err := chacha20poly1305.NewX(key[:])
		if err != nil {
			return nil, err
		}
		s.layers = append(s.layers, x)
	}
	s.bufs.New = func() any {
		b := make([]byte, 2*(sealBlock+128))
		return &b
	}
	block := make([]byte, sealBlock)
	for _, l := range s.layers {
		block = s.seal(l, block)
	}
	s.sealed = block
	return s, nil
}

// seal seals p under layer l with a fresh random nonce, returning nonce
// and ciphertext in a new slice.
func (s *sealer) seal(l cipher.AEAD, p []byte) []byte {
	out := make([]byte, l.NonceSize(), l.NonceSize()+len(p)+l.Overhead())
	if _, err := rand.Read(out); err != nil {
		panic(err)
	}
	return l.Seal(out, out[:l.NonceSize()], p, nil)
}

// write seals every block of p, each layer over the one below.
func (s *sealer) write(p []byte) {
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := *bp
	for off := 0; off < len(p); off += sealBlock {
		in := p[off:min(off+sealBlock, len(p))]
		for _, l := range s.layers {
			ns := l.NonceSize()
			if _, err := rand.Read(buf[:ns]); err != nil {
				panic(err)
			}
			out := l.Seal(buf[ns:ns], buf[:ns], in, nil)
			s.seals.Add(1)
			// The next layer seals this layer's nonce and ciphertext,
			// from the buffer's second half (each half holds a block
			// with both layers' nonces and tags).
			next := buf[len(buf)/2:][:ns+len(out)]
			copy(next, buf[:ns+len(out)])
			in = next
		}
	}
}

// read opens, for every block of n bytes, the kept sealed block from the
// outer layer down to the first.
func (s *sealer) read(n int) {
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := *bp
	for off := 0; off < n; off += sealBlock {
		in := s.sealed
		for i := len(s.layers) - 1; i >= 0; i-- {
			l := s.layers[i]
			ns := l.NonceSize()
			dst := buf[:0]
			if i%2 == 1 {
				dst = buf[len(buf)/2:][:0]
			}
			out, err := l.Open(dst, in[:ns], in[ns:], nil)
			if err != nil {
				panic("passthrough: a kept sealed block does not open: " + err.Error())
			}
			s.opens.Add(1)
			in = out
		}
	}
}
