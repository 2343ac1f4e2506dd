package crypto

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type kwVector struct{ Name, KEK, Key, Wrapped string }

func loadKW(t testing.TB) (kw, kwp []kwVector) {
	var v struct{ KW, KWP []kwVector }
	loadJSON(t, "aeskw.json", &v)
	return v.KW, v.KWP
}

func TestAESKWVectors(t *testing.T) {
	kw, kwp := loadKW(t)
	require.Len(t, kw, 6)
	require.Len(t, kwp, 2)
	for _, tc := range []struct {
		vectors []kwVector
		wrap    func(kek, key []byte) ([]byte, error)
		unwrap  func(kek, wrapped []byte) ([]byte, error)
	}{
		{kw, WrapAESKW, UnwrapAESKW},
		{kwp, WrapAESKWP, UnwrapAESKWP},
	} {
		for _, v := range tc.vectors {
			t.Run(v.Name, func(t *testing.T) {
				kek, key, wrapped := unhex(t, v.KEK), unhex(t, v.Key), unhex(t, v.Wrapped)
				got, err := tc.wrap(kek, key)
				require.NoError(t, err)
				assert.Equal(t, wrapped, got)

				got, err = tc.unwrap(kek, wrapped)
				require.NoError(t, err)
				assert.Equal(t, key, got)

				for i := range wrapped {
					_, err = tc.unwrap(kek, flip(wrapped, i))
					require.ErrorIs(t, err, ErrWrongKey, "flipped byte %d", i)
				}
				_, err = tc.unwrap(flip(kek, 0), wrapped)
				assert.ErrorIs(t, err, ErrWrongKey, "wrong KEK")
			})
		}
	}
}

func TestAESKWPRoundTripLengths(t *testing.T) {
	kek := NewDataKey()
	for n := 1; n <= 72; n++ {
		key := pattern(n)
		w, err := WrapAESKWP(kek, key)
		require.NoError(t, err)
		require.Len(t, w, 8+(n+7)/8*8)
		got, err := UnwrapAESKWP(kek, w)
		require.NoError(t, err, "n=%d", n)
		require.Equal(t, key, got)
		if n%8 == 0 && n >= 16 {
			// For whole blocks, KW and KWP differ only in their initial
			// value: neither unwraps the other.
			kwWrapped, err := WrapAESKW(kek, key)
			require.NoError(t, err)
			assert.False(t, bytes.Equal(kwWrapped, w))
			_, err = UnwrapAESKWP(kek, kwWrapped)
			assert.ErrorIs(t, err, ErrWrongKey)
			_, err = UnwrapAESKW(kek, w)
			assert.ErrorIs(t, err, ErrWrongKey)
		}
	}
}

// TestAESKWPBadLength checks that a wrap whose length field disagrees with
// its size is refused even though the cipher layer is intact.
func TestAESKWPBadLength(t *testing.T) {
	kek := NewDataKey()
	b, err := kwCipher(kek)
	require.NoError(t, err)
	for _, tc := range []struct {
		name   string
		mli    byte
		padded int
		pad    byte
	}{
		{"length zero", 0, 16, 0},
		{"length beyond the data", 17, 16, 0},
		{"length a block short", 8, 16, 0},
		{"non-zero padding", 12, 16, 1},
	} {
		buf := make([]byte, 8+tc.padded)
		copy(buf, kwpICV[:])
		buf[7] = tc.mli
		buf[len(buf)-1] = tc.pad
		kwWrap(b, buf)
		_, err := UnwrapAESKWP(kek, buf)
		assert.ErrorIs(t, err, ErrWrongKey, tc.name)
	}
}

func TestAESKWBadInput(t *testing.T) {
	kek := NewDataKey()
	for _, n := range []int{0, 8, 15, 17} {
		_, err := WrapAESKW(kek, make([]byte, n))
		assert.Error(t, err, "wrap %d", n)
	}
	for _, n := range []int{0, 16, 23, 25} {
		_, err := UnwrapAESKW(kek, make([]byte, n))
		assert.Error(t, err, "unwrap %d", n)
	}
	_, err := WrapAESKWP(kek, nil)
	assert.Error(t, err)
	for _, n := range []int{0, 8, 15, 17} {
		_, err := UnwrapAESKWP(kek, make([]byte, n))
		assert.Error(t, err, "unwrap-pad %d", n)
	}
	_, err = WrapAESKW(make([]byte, 20), make([]byte, 16))
	assert.Error(t, err, "bad KEK size")
	_, err = UnwrapAESKWP(make([]byte, 20), make([]byte, 16))
	assert.Error(t, err, "bad KEK size")
}
