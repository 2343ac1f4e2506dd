// Package api is hostcryptd's control API as its clients see it: the
// resources (disks, VMs, disk encryption sets, snapshots, images) in the
// shape the API shows them, the requests that change them, the error
// envelope, the routes, and a typed Go client over the daemon's unix
// socket.
//
// It depends on the standard library only, so that a client — the
// hostcrypt CLI, a web console, a test — links none of the daemon: no disk
// engine, no FUSE. The daemon's own records (what state.json holds) and its
// running objects are other types, in package control and below; a field
// here is a promise to clients, not a storage format.
//
// Every route is listed in routes.go; errors come as
// {"error":{"code":…,"message":…}} with a 4xx or 5xx status (Error).
package api
