package fs

import gofs "github.com/hanwen/go-fuse/v2/fs"

// The operations each node type implements, checked at compile time. An
// operation missing here is answered by go-fuse's default.
var (
	_ gofs.NodeGetattrer = (*dirNode)(nil)
	_ gofs.NodeSetattrer = (*dirNode)(nil)
	_ gofs.NodeStatfser  = (*dirNode)(nil)
	_ gofs.NodeCreater   = (*dirNode)(nil)
	_ gofs.NodeMkdirer   = (*dirNode)(nil)
	_ gofs.NodeMknoder   = (*dirNode)(nil)
	_ gofs.NodeLinker    = (*dirNode)(nil)
	_ gofs.NodeSymlinker = (*dirNode)(nil)
	_ gofs.NodeUnlinker  = (*dirNode)(nil)
	_ gofs.NodeRmdirer   = (*dirNode)(nil)
	_ gofs.NodeRenamer   = (*dirNode)(nil)

	_ gofs.NodeGetattrer = (*imageNode)(nil)
	_ gofs.NodeSetattrer = (*imageNode)(nil)
	_ gofs.NodeStatfser  = (*imageNode)(nil)
	_ gofs.NodeOpener    = (*imageNode)(nil)
	_ gofs.NodeReader    = (*imageNode)(nil)
	_ gofs.NodeWriter    = (*imageNode)(nil)
	_ gofs.NodeFsyncer   = (*imageNode)(nil)
	_ gofs.NodeFlusher   = (*imageNode)(nil)
	_ gofs.NodeAllocater = (*imageNode)(nil)
	_ gofs.NodeLseeker   = (*imageNode)(nil)
)
