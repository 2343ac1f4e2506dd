package zeros

import "testing"

func TestIs(t *testing.T) {
	if !Is(nil) || !Is(make([]byte, 17)) {
		t.Fatal("zero buffers reported as data")
	}
	for n := 1; n <= 24; n++ {
		for i := 0; i < n; i++ {
			b := make([]byte, n)
			b[i] = 1
			if Is(b) {
				t.Fatalf("a set byte at %d of %d was missed", i, n)
			}
		}
	}
}
