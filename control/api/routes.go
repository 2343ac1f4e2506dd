package api

import (
	"net/url"
	"strings"
)

// Routes of the control API, as "METHOD /path" patterns: the daemon
// registers them with net/http's ServeMux, the client fills their {…} in
// order (Path). JSON bodies throughout; a refusal is an ErrorEnvelope.
const (
	RouteListDisks  = "GET /disks"
	RouteCreateDisk = "POST /disks"             // CreateDiskRequest -> Disk
	RouteShowDisk   = "GET /disks/{name}"       //
	RouteUpdateDisk = "PATCH /disks/{name}"     // UpdateDiskRequest -> Disk
	RouteDeleteDisk = "DELETE /disks/{name}"    //
	RouteMoveDisk   = "POST /disks/{name}/move" // MoveRequest -> Disk
	// RouteImportDisk and RouteExportDisk answer with a stream of
	// TransferEvent lines once the copy starts (see Client.Transfer).
	RouteImportDisk = "POST /disks/import"        // ImportDiskRequest
	RouteExportDisk = "POST /disks/{name}/export" // ExportDiskRequest

	RouteListVMs          = "GET /vms"
	RouteCreateVM         = "POST /vms"                         // CreateVMRequest -> VM
	RouteShowVM           = "GET /vms/{name}"                   //
	RouteUpdateVM         = "PATCH /vms/{name}"                 // UpdateVMRequest -> VM
	RouteDeleteVM         = "DELETE /vms/{name}"                //
	RouteStartVM          = "POST /vms/{name}/start"            // -> VM
	RouteStopVM           = "POST /vms/{name}/stop"             // -> VM
	RouteDeallocateVM     = "POST /vms/{name}/deallocate"       // -> VM
	RouteEncryptionReport = "GET /vms/{name}/encryption-report" // -> EncryptionReport
	RouteAttachDisk       = "POST /vms/{name}/disks"            // AttachRequest -> VM
	RouteDetachDisk       = "DELETE /vms/{name}/disks/{disk}"   // -> VM

	RouteListDES   = "GET /des"           // with a live check of each set's key access
	RouteCreateDES = "POST /des"          // CreateDESRequest -> DiskEncryptionSet
	RouteShowDES   = "GET /des/{name}"    //
	RouteUpdateDES = "PATCH /des/{name}"  // UpdateDESRequest -> DiskEncryptionSet
	RouteDeleteDES = "DELETE /des/{name}" //

	RouteListSnapshots  = "GET /snapshots"
	RouteCreateSnapshot = "POST /snapshots"             // CreateSnapshotRequest -> Snapshot
	RouteShowSnapshot   = "GET /snapshots/{name}"       //
	RouteUpdateSnapshot = "PATCH /snapshots/{name}"     // UpdateSnapshotRequest -> Snapshot
	RouteDeleteSnapshot = "DELETE /snapshots/{name}"    //
	RouteMoveSnapshot   = "POST /snapshots/{name}/move" // MoveRequest -> Snapshot

	RouteListImages  = "GET /images"
	RouteCreateImage = "POST /images"             // CreateImageRequest -> Image
	RouteShowImage   = "GET /images/{name}"       //
	RouteDeleteImage = "DELETE /images/{name}"    //
	RouteMoveImage   = "POST /images/{name}/move" // MoveRequest -> Image

	// RouteProgress is the progress of the copy creating the resource
	// {kind}/{name}: disks, snapshots or images. It never waits for the
	// operation it reports on.
	RouteProgress = "GET /progress/{kind}/{name}" // -> CopyProgress

	RouteGC = "POST /host/gc" // GCRequest -> GCReport

	RouteListIdentities = "GET /identities"
	RouteCreateIdentity = "POST /identities"          // CreateIdentityRequest -> UserAssignedIdentity
	RouteShowIdentity   = "GET /identities/{name}"    //
	RouteDeleteIdentity = "DELETE /identities/{name}" //

	RouteListSubscriptions    = "GET /subscriptions"
	RouteShowSubscription     = "GET /subscriptions/{id}"
	RouteTransferSubscription = "POST /subscriptions/{id}/transfer" // TransferSubscriptionRequest -> Subscription

	RouteListGalleries = "GET /galleries"
	RouteCreateGallery = "POST /galleries"             // CreateGalleryRequest -> Gallery
	RouteShowGallery   = "GET /galleries/{name}"       //
	RouteDeleteGallery = "DELETE /galleries/{name}"    //
	RouteMoveGallery   = "POST /galleries/{name}/move" // MoveRequest -> Gallery

	RouteListGalleryImages  = "GET /galleries/{gallery}/images"
	RouteCreateGalleryImage = "POST /galleries/{gallery}/images"          // CreateGalleryImageRequest -> GalleryImage
	RouteShowGalleryImage   = "GET /galleries/{gallery}/images/{name}"    //
	RouteDeleteGalleryImage = "DELETE /galleries/{gallery}/images/{name}" //

	RouteListGalleryImageVersions  = "GET /galleries/{gallery}/images/{image}/versions"
	RouteCreateGalleryImageVersion = "POST /galleries/{gallery}/images/{image}/versions"          // CreateGalleryImageVersionRequest -> GalleryImageVersion
	RouteShowGalleryImageVersion   = "GET /galleries/{gallery}/images/{image}/versions/{name}"    //
	RouteDeleteGalleryImageVersion = "DELETE /galleries/{gallery}/images/{image}/versions/{name}" //

	// RouteListHosts lists the hosts that use the store: this one alone on
	// a host's own store.
	RouteListHosts = "GET /hosts" // -> []HostInfo
)

// Kinds of RouteProgress.
const (
	KindDisks     = "disks"
	KindSnapshots = "snapshots"
	KindImages    = "images"
	// KindGalleryImageVersions names a version GALLERY/DEFINITION/VERSION.
	KindGalleryImageVersions = "galleryImageVersions"
)

// Path returns the method and the path of route with its {…} filled in
// order by names, each escaped.
func Path(route string, names ...string) (method, path string) {
	method, pattern, _ := strings.Cut(route, " ")
	var b strings.Builder
	for {
		open := strings.IndexByte(pattern, '{')
		if open < 0 {
			b.WriteString(pattern)
			break
		}
		end := strings.IndexByte(pattern[open:], '}')
		b.WriteString(pattern[:open])
		if len(names) == 0 {
			panic("api.Path: too few names for " + route)
		}
		b.WriteString(url.PathEscape(names[0]))
		names = names[1:]
		pattern = pattern[open+end+1:]
	}
	if len(names) > 0 {
		panic("api.Path: too many names for " + route)
	}
	return method, b.String()
}
