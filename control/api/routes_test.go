package api

import (
	"go/build"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPathFillsAndEscapes(t *testing.T) {
	m, p := Path(RouteDetachDisk, "vm 1", "d/2")
	assert.Equal(t, http.MethodDelete, m)
	assert.Equal(t, "/vms/vm%201/disks/d%2F2", p)
	m, p = Path(RouteListDisks)
	assert.Equal(t, "GET", m)
	assert.Equal(t, "/disks", p)
	assert.Panics(t, func() { Path(RouteShowDisk) })
	assert.Panics(t, func() { Path(RouteListDisks, "x") })
}

// Every route is a pattern net/http accepts, and none twice.
func TestRoutesRegister(t *testing.T) {
	mux := http.NewServeMux()
	for _, r := range allRoutes {
		require.NotPanics(t, func() { mux.HandleFunc(r, func(http.ResponseWriter, *http.Request) {}) }, r)
	}
}

var allRoutes = []string{
	RouteListDisks, RouteCreateDisk, RouteShowDisk, RouteUpdateDisk, RouteDeleteDisk, RouteMoveDisk, RouteImportDisk, RouteExportDisk,
	RouteListVMs, RouteCreateVM, RouteShowVM, RouteUpdateVM, RouteDeleteVM, RouteStartVM, RouteStopVM, RouteDeallocateVM,
	RouteEncryptionReport, RouteAttachDisk, RouteDetachDisk,
	RouteListDES, RouteCreateDES, RouteShowDES, RouteUpdateDES, RouteDeleteDES,
	RouteListSnapshots, RouteCreateSnapshot, RouteShowSnapshot, RouteUpdateSnapshot, RouteDeleteSnapshot, RouteMoveSnapshot,
	RouteListImages, RouteCreateImage, RouteShowImage, RouteDeleteImage, RouteMoveImage,
	RouteProgress, RouteGC, RouteListHosts,
	RouteListIdentities, RouteCreateIdentity, RouteShowIdentity, RouteDeleteIdentity,
	RouteListSubscriptions, RouteShowSubscription, RouteTransferSubscription,
	RouteListGalleries, RouteCreateGallery, RouteShowGallery, RouteDeleteGallery, RouteMoveGallery,
	RouteListGalleryImages, RouteCreateGalleryImage, RouteShowGalleryImage, RouteDeleteGalleryImage,
	RouteListGalleryImageVersions, RouteCreateGalleryImageVersion, RouteShowGalleryImageVersion, RouteDeleteGalleryImageVersion,
}

// The package is for clients: it imports the standard library only.
func TestStandardLibraryOnly(t *testing.T) {
	pkg, err := build.Default.ImportDir(".", 0)
	require.NoError(t, err)
	for _, imp := range pkg.Imports {
		assert.False(t, strings.Contains(strings.SplitN(imp, "/", 2)[0], "."), "imports %s", imp)
		assert.False(t, strings.HasPrefix(imp, "hostcrypt/"), "imports %s", imp)
	}
}

// A gallery image version's path travels as one escaped segment and comes
// back whole, as the progress of its creation is asked for by it.
func TestProgressNameWithSlashes(t *testing.T) {
	mux := http.NewServeMux()
	var kind, name string
	mux.HandleFunc(RouteProgress, func(_ http.ResponseWriter, r *http.Request) {
		kind, name = r.PathValue("kind"), r.PathValue("name")
	})
	m, p := Path(RouteProgress, KindGalleryImageVersions, "g1/def1/1.0.0")
	req, err := http.NewRequest(m, "http://x"+p, nil)
	require.NoError(t, err)
	mux.ServeHTTP(nil, req)
	assert.Equal(t, KindGalleryImageVersions, kind)
	assert.Equal(t, "g1/def1/1.0.0", name)
}
