package auditchain

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzVerify feeds arbitrary file contents to the verifier: it must not
// panic, and a problem it reports must point at a line of a file it read.
func FuzzVerify(f *testing.F) {
	dir, heads := testLog(f, 3, 2)
	for _, name := range []string{RotatedName(3), Current} {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		f.Add(b, []byte(nil), uint64(2))
	}
	a, _ := os.ReadFile(filepath.Join(dir, RotatedName(3)))
	b, _ := os.ReadFile(filepath.Join(dir, Current))
	f.Add(a, b, uint64(4))
	f.Add([]byte("{\"checkpoint\":{\"seq\":1,\"hash\":\"00\"}}\n{}\n"), []byte("x"), uint64(0))
	f.Fuzz(func(t *testing.T, first, second []byte, since uint64) {
		files := []File{{Name: RotatedName(3), R: bytes.NewReader(first)}}
		if second != nil {
			files = append(files, File{Name: Current, R: bytes.NewReader(second)})
		}
		h := Head{Seq: since, Hash: heads[since%6].Hash}
		rep, err := VerifyFiles(files, Options{SinceHead: &h})
		if err != nil {
			t.Fatal(err)
		}
		if p := rep.Problem; p != nil && (p.Line < 1 || p.File == "" || p.Message == "") {
			t.Fatalf("problem without a place: %+v", p)
		}
		if rep.OK != (rep.Problem == nil) {
			t.Fatalf("ok=%v with problem %+v", rep.OK, rep.Problem)
		}
	})
}
