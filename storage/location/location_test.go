package location_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"hostcrypt/storage/local"
	"hostcrypt/storage/location"
	"hostcrypt/storage/rados"
)

func TestParse(t *testing.T) {
	cwd, err := filepath.Abs(".")
	require.NoError(t, err)
	for _, tc := range []struct {
		in   string
		dir  string       // a directory location, or
		want rados.Config // a RADOS one
	}{
		{in: "/var/lib/hostcrypt/storage", dir: "/var/lib/hostcrypt/storage"},
		{in: "var/storage", dir: "var/storage"},
		{in: "./rados:x", dir: "./rados:x"},
		{in: "c:data", dir: "c:data"}, // a colon but no "//": a relative path
		{in: "rados://pool", want: rados.Config{Pool: "pool", User: "admin", Timeout: rados.DefaultTimeout}},
		{in: "rados://pool/ns?conf=/etc/ceph/c.conf&id=hostcrypt", want: rados.Config{
			Pool: "pool", Namespace: "ns", ConfFile: "/etc/ceph/c.conf", User: "hostcrypt", Timeout: rados.DefaultTimeout}},
		{in: "RADOS://p?id=client.x&timeout=5s", want: rados.Config{Pool: "p", User: "x", Timeout: 5 * time.Second}},
		{in: "rados://p?conf=rel/ceph.conf", want: rados.Config{
			Pool: "p", ConfFile: filepath.Join(cwd, "rel/ceph.conf"), User: "admin", Timeout: rados.DefaultTimeout}},
		{in: "rados://my%20pool/n%2Fs", want: rados.Config{Pool: "my pool", Namespace: "n/s", User: "admin", Timeout: rados.DefaultTimeout}},
	} {
		t.Run(tc.in, func(t *testing.T) {
			l, err := location.Parse(tc.in)
			require.NoError(t, err)
			if tc.dir != "" {
				require.Equal(t, location.Location{Dir: tc.dir}, l)
				return
			}
			require.Empty(t, l.Dir)
			require.NotNil(t, l.RADOS)
			require.Equal(t, tc.want, *l.RADOS)
			again, err := location.Parse(l.String())
			require.NoError(t, err, "String gives what Parse takes: %s", l)
			require.Equal(t, l, again)
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ in, says string }{
		{"", "no storage location given"},
		{"http://host/x", `unknown scheme "http"`},
		{"s3://bucket", `unknown scheme "s3"`},
		{"rados:pool", "starts with rados://"},
		{"rados://", "no pool given"},
		{"rados:///ns", "no pool given"},
		{"rados://?conf=/c", "no pool given"},
		{"rados://pool/", "empty namespace"},
		{"rados://pool/a/b", "one path segment"},
		{"rados://admin@pool", "?id=USER"},
		{"rados://pool#frag", "no #fragment"},
		{"rados://pool?key=AQBsecret", `unknown parameter "key"`},
		{"rados://pool?conf=", "conf is empty"},
		{"rados://pool?id=", "id is empty"},
		{"rados://pool?id=client.", "id is empty"},
		{"rados://pool?id=a&id=b", "id is given 2 times"},
		{"rados://pool?timeout=soon", `timeout "soon"`},
		{"rados://pool?timeout=-1s", "must be positive"},
		{"rados://pool?timeout=500ms", "below librados' resolution"},
		{"rados://po%zzol", "invalid URL escape"},
		{"rados://pool?conf=%zz", "invalid URL escape"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			_, err := location.Parse(tc.in)
			require.Error(t, err)
			require.ErrorContains(t, err, tc.says)
		})
	}
}

func TestOpenDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "store")
	b, err := location.Open(t.Context(), dir)
	require.NoError(t, err)
	defer b.Close()
	lb, ok := b.(*local.Backend)
	require.True(t, ok, "a path opens a local backend, got %T", b)
	require.Equal(t, dir, lb.Dir())
	require.NoError(t, b.WriteMeta(t.Context(), "m", []byte("x")))

	require.ErrorContains(t, location.Check("rados://"), "no pool given")
	_, err = location.Open(t.Context(), "ftp://x")
	require.ErrorContains(t, err, "unknown scheme")
	_, err = location.Location{}.Open(t.Context())
	require.ErrorContains(t, err, "no storage location given")
}

// FuzzParse: no input makes Parse panic, and every RADOS location it
// accepts comes back the same through String.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"/srv/x", "rados://p/ns?conf=/c&id=u&timeout=3s", "rados://p%2F", "x:y", "rados://a?b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := location.Parse(s)
		if err != nil || l.RADOS == nil {
			return
		}
		again, err := location.Parse(l.String())
		require.NoError(t, err, "%q gave %q", s, l)
		require.Equal(t, l, again)
	})
}
