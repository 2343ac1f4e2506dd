package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSealer(t *testing.T) {
	none, err := newSealer("none")
	require.NoError(t, err)
	assert.Nil(t, none, "--seal none does no cipher work")
	_, err = newSealer("rot13")
	assert.ErrorContains(t, err, "want none, aes or double")

	for mode, layers := range map[string]int{"aes": 1, "double": 2} {
		t.Run(mode, func(t *testing.T) {
			s, err := newSealer(mode)
			require.NoError(t, err)
			require.Len(t, s.layers, layers)
			// The kept block carries every layer's nonce and tag.
			want := sealBlock
			for _, l := range s.layers {
				want += l.NonceSize() + l.Overhead()
			}
			assert.Len(t, s.sealed, want)

			// Three whole blocks and a piece: four blocks of work per layer,
			// and the request's bytes are left as they were.
			p := make([]byte, 3*sealBlock+100)
			for i := range p {
				p[i] = byte(i)
			}
			orig := append([]byte(nil), p...)
			s.write(p)
			assert.Equal(t, orig, p)
			assert.EqualValues(t, 4*layers, s.seals.Load())
			s.read(2 * sealBlock)
			assert.EqualValues(t, 2*layers, s.opens.Load())
		})
	}
}

func TestParseSealFlag(t *testing.T) {
	cfg, err := parseFlags([]string{"--backing", "b", "--mount", "m", "--seal", "double"})
	require.NoError(t, err)
	assert.Equal(t, "double", cfg.seal)
	_, err = parseFlags([]string{"--backing", "b", "--mount", "m", "--seal", "xts"})
	assert.ErrorContains(t, err, "want none, aes or double")
}
