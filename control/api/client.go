package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
)

// Client calls the control API over hostcryptd's unix socket. Its methods
// return the resource the API answers with; a refusal is an *Error.
type Client struct {
	http *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{http: &http.Client{Transport: tr}}
}

// Close releases the client's idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Call sends the request of route, its {…} filled by names, with body in
// (nil for none), and decodes the answer into out (nil to drop it).
func (c *Client) Call(ctx context.Context, route string, in, out any, names ...string) error {
	method, path := Path(route, names...)
	return c.Do(ctx, method, path, in, out)
}

// Do sends a request with body in (nil for none) and decodes the answer
// into out (nil to drop it). A refusal comes back as *Error.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return refusal(resp, raw)
	}
	if out != nil && len(raw) > 0 {
		return json.Unmarshal(raw, out)
	}
	return nil
}

func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://hostcryptd"+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("cannot reach hostcryptd: %w (is it running? check --host-socket or HOSTCRYPT_SOCKET)", err)
	}
	return resp, nil
}

// refusal makes the *Error of a refused request.
func refusal(resp *http.Response, raw []byte) error {
	var env ErrorEnvelope
	if json.Unmarshal(raw, &env) == nil && env.Error != nil {
		env.Error.Status = resp.StatusCode
		return env.Error
	}
	return fmt.Errorf("hostcryptd answered %s", resp.Status)
}

// Transfer sends a streamed request (RouteImportDisk or RouteExportDisk)
// and calls progress for each progress line; it returns the disk of the
// last line. Cancelling ctx cancels the transfer.
func (c *Client) Transfer(ctx context.Context, route string, in any, progress func(Progress), names ...string) (*Disk, error) {
	method, path := Path(route, names...)
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev TransferEvent
		if err := dec.Decode(&ev); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("reading hostcryptd's answer (%s): %w", resp.Status, err)
		}
		switch {
		case ev.Error != nil:
			if resp.StatusCode >= 300 {
				ev.Error.Status = resp.StatusCode
			}
			return nil, ev.Error
		case resp.StatusCode >= 300:
			return nil, fmt.Errorf("hostcryptd answered %s", resp.Status)
		case ev.Disk != nil:
			return ev.Disk, nil
		case ev.Progress != nil && progress != nil:
			progress(*ev.Progress)
		}
	}
	return nil, fmt.Errorf("hostcryptd answered %s and ended before the transfer finished", resp.Status)
}

func one[T any](c *Client, ctx context.Context, route string, in any, names ...string) (*T, error) {
	var out T
	if err := c.Call(ctx, route, in, &out, names...); err != nil {
		return nil, err
	}
	return &out, nil
}

func many[T any](c *Client, ctx context.Context, route string) ([]T, error) {
	var out []T
	if err := c.Call(ctx, route, nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// ListDisks lists every disk, sorted by name.
func (c *Client) ListDisks(ctx context.Context) ([]Disk, error) {
	return many[Disk](c, ctx, RouteListDisks)
}

// CreateDisk creates a disk, empty or copied from a snapshot or image.
func (c *Client) CreateDisk(ctx context.Context, r CreateDiskRequest) (*Disk, error) {
	return one[Disk](c, ctx, RouteCreateDisk, r)
}

// ShowDisk returns one disk.
func (c *Client) ShowDisk(ctx context.Context, name string) (*Disk, error) {
	return one[Disk](c, ctx, RouteShowDisk, nil, name)
}

// UpdateDisk grows a disk or switches its keys.
func (c *Client) UpdateDisk(ctx context.Context, name string, r UpdateDiskRequest) (*Disk, error) {
	return one[Disk](c, ctx, RouteUpdateDisk, r, name)
}

// DeleteDisk crypto-shreds a disk.
func (c *Client) DeleteDisk(ctx context.Context, name string) error {
	return c.Call(ctx, RouteDeleteDisk, nil, nil, name)
}

// MoveDisk moves a disk to another resource group or subscription.
func (c *Client) MoveDisk(ctx context.Context, name string, r MoveRequest) (*Disk, error) {
	return one[Disk](c, ctx, RouteMoveDisk, r, name)
}

// ImportDisk creates a disk from an image file on the host.
func (c *Client) ImportDisk(ctx context.Context, r ImportDiskRequest, progress func(Progress)) (*Disk, error) {
	return c.Transfer(ctx, RouteImportDisk, r, progress)
}

// ExportDisk writes a disk's plaintext to a raw image file on the host.
func (c *Client) ExportDisk(ctx context.Context, name string, r ExportDiskRequest, progress func(Progress)) (*Disk, error) {
	return c.Transfer(ctx, RouteExportDisk, r, progress, name)
}

// ListVMs lists every VM, sorted by name.
func (c *Client) ListVMs(ctx context.Context) ([]VM, error) { return many[VM](c, ctx, RouteListVMs) }

// CreateVM creates a VM and starts it.
func (c *Client) CreateVM(ctx context.Context, r CreateVMRequest) (*VM, error) {
	return one[VM](c, ctx, RouteCreateVM, r)
}

// ShowVM returns one VM.
func (c *Client) ShowVM(ctx context.Context, name string) (*VM, error) {
	return one[VM](c, ctx, RouteShowVM, nil, name)
}

// UpdateVM changes a deallocated VM's host-side settings.
func (c *Client) UpdateVM(ctx context.Context, name string, r UpdateVMRequest) (*VM, error) {
	return one[VM](c, ctx, RouteUpdateVM, r, name)
}

// DeleteVM deletes a VM that is not running.
func (c *Client) DeleteVM(ctx context.Context, name string) error {
	return c.Call(ctx, RouteDeleteVM, nil, nil, name)
}

// StartVM starts a VM.
func (c *Client) StartVM(ctx context.Context, name string) (*VM, error) {
	return one[VM](c, ctx, RouteStartVM, nil, name)
}

// StopVM stops a VM, keeping its temp disk.
func (c *Client) StopVM(ctx context.Context, name string) (*VM, error) {
	return one[VM](c, ctx, RouteStopVM, nil, name)
}

// DeallocateVM stops a VM and destroys its temp disk.
func (c *Client) DeallocateVM(ctx context.Context, name string) (*VM, error) {
	return one[VM](c, ctx, RouteDeallocateVM, nil, name)
}

// EncryptionReport says what of a VM is encrypted where.
func (c *Client) EncryptionReport(ctx context.Context, name string) (*EncryptionReport, error) {
	return one[EncryptionReport](c, ctx, RouteEncryptionReport, nil, name)
}

// AttachDisk attaches a data disk to a VM.
func (c *Client) AttachDisk(ctx context.Context, vm string, r AttachRequest) (*VM, error) {
	return one[VM](c, ctx, RouteAttachDisk, r, vm)
}

// DetachDisk detaches a data disk from a VM.
func (c *Client) DetachDisk(ctx context.Context, vm, disk string) (*VM, error) {
	return one[VM](c, ctx, RouteDetachDisk, nil, vm, disk)
}

// ListDES lists every disk encryption set, sorted by name.
func (c *Client) ListDES(ctx context.Context) ([]DiskEncryptionSet, error) {
	return many[DiskEncryptionSet](c, ctx, RouteListDES)
}

// CreateDES creates a disk encryption set and its identity.
func (c *Client) CreateDES(ctx context.Context, r CreateDESRequest) (*DiskEncryptionSet, error) {
	return one[DiskEncryptionSet](c, ctx, RouteCreateDES, r)
}

// ShowDES returns one disk encryption set.
func (c *Client) ShowDES(ctx context.Context, name string) (*DiskEncryptionSet, error) {
	return one[DiskEncryptionSet](c, ctx, RouteShowDES, nil, name)
}

// UpdateDES switches a set's key or its auto-rotation.
func (c *Client) UpdateDES(ctx context.Context, name string, r UpdateDESRequest) (*DiskEncryptionSet, error) {
	return one[DiskEncryptionSet](c, ctx, RouteUpdateDES, r, name)
}

// DeleteDES deletes a disk encryption set no disk uses.
func (c *Client) DeleteDES(ctx context.Context, name string) error {
	return c.Call(ctx, RouteDeleteDES, nil, nil, name)
}

// ListSnapshots lists every snapshot, sorted by name.
func (c *Client) ListSnapshots(ctx context.Context) ([]Snapshot, error) {
	return many[Snapshot](c, ctx, RouteListSnapshots)
}

// CreateSnapshot takes a snapshot of a disk.
func (c *Client) CreateSnapshot(ctx context.Context, r CreateSnapshotRequest) (*Snapshot, error) {
	return one[Snapshot](c, ctx, RouteCreateSnapshot, r)
}

// ShowSnapshot returns one snapshot.
func (c *Client) ShowSnapshot(ctx context.Context, name string) (*Snapshot, error) {
	return one[Snapshot](c, ctx, RouteShowSnapshot, nil, name)
}

// UpdateSnapshot switches a snapshot's keys.
func (c *Client) UpdateSnapshot(ctx context.Context, name string, r UpdateSnapshotRequest) (*Snapshot, error) {
	return one[Snapshot](c, ctx, RouteUpdateSnapshot, r, name)
}

// DeleteSnapshot destroys a snapshot.
func (c *Client) DeleteSnapshot(ctx context.Context, name string) error {
	return c.Call(ctx, RouteDeleteSnapshot, nil, nil, name)
}

// MoveSnapshot moves a snapshot to another resource group or subscription.
func (c *Client) MoveSnapshot(ctx context.Context, name string, r MoveRequest) (*Snapshot, error) {
	return one[Snapshot](c, ctx, RouteMoveSnapshot, r, name)
}

// ListImages lists every image, sorted by name.
func (c *Client) ListImages(ctx context.Context) ([]Image, error) {
	return many[Image](c, ctx, RouteListImages)
}

// CreateImage makes an image from a disk or a snapshot.
func (c *Client) CreateImage(ctx context.Context, r CreateImageRequest) (*Image, error) {
	return one[Image](c, ctx, RouteCreateImage, r)
}

// ShowImage returns one image.
func (c *Client) ShowImage(ctx context.Context, name string) (*Image, error) {
	return one[Image](c, ctx, RouteShowImage, nil, name)
}

// DeleteImage destroys an image.
func (c *Client) DeleteImage(ctx context.Context, name string) error {
	return c.Call(ctx, RouteDeleteImage, nil, nil, name)
}

// MoveImage moves an image to another resource group or subscription.
func (c *Client) MoveImage(ctx context.Context, name string, r MoveRequest) (*Image, error) {
	return one[Image](c, ctx, RouteMoveImage, r, name)
}

// Progress returns the progress of the copy creating kind/name, or a 404
// when none runs.
func (c *Client) Progress(ctx context.Context, kind, name string) (*CopyProgress, error) {
	return one[CopyProgress](c, ctx, RouteProgress, nil, kind, name)
}

// GC lists (DryRun) or removes what no record owns.
func (c *Client) GC(ctx context.Context, r GCRequest) (*GCReport, error) {
	return one[GCReport](c, ctx, RouteGC, r)
}

// ListHosts lists the hosts that use the store, with their state and VMs.
func (c *Client) ListHosts(ctx context.Context) ([]HostInfo, error) {
	return many[HostInfo](c, ctx, RouteListHosts)
}
