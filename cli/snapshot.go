package cli

import (
	"fmt"
	"time"

	"hostcrypt/control/api"
	"hostcrypt/internal/units"
)

func snapshotCommands() []Command {
	return []Command{
		{"snapshot", "create", "take a snapshot of a disk, also while its VM runs (--incremental: only what changed)", snapshotCreate},
		{"snapshot", "show", "show a snapshot", snapshotShow},
		{"snapshot", "list", "list snapshots", snapshotList},
		{"snapshot", "update", "switch a snapshot between platform and customer keys (its key is re-wrapped)", snapshotUpdate},
		{"snapshot", "delete", "delete a snapshot: its wrapped key first, then its data", snapshotDelete},
		{"snapshot", "move", "move a snapshot to another resource group (customer-key snapshots stay in their subscription)", moveCmd("snapshot", api.RouteMoveSnapshot)},
	}
}

func imageCommands() []Command {
	return []Command{
		{"image", "create", "make an image from a disk not in use or from a snapshot (a copy under its own key)", imageCreate},
		{"image", "show", "show an image", imageShow},
		{"image", "list", "list images", imageList},
		{"image", "delete", "delete an image: its wrapped key first, then its data", imageDelete},
		{"image", "move", "move an image to another resource group (customer-key images stay in their subscription)", moveCmd("image", api.RouteMoveImage)},
	}
}

var snapshotHeader = []string{"NAME", "SOURCE", "INCREMENTAL", "SIZE", "USED", "COPIED", "SHARED", "PAUSE", "KEY"}

func snapshotRow(s *api.Snapshot) []string {
	return []string{s.Name, s.SourceDisk, fmt.Sprint(s.Incremental), units.FormatSize(s.DiskSizeBytes), units.FormatSize(s.UsedBytes),
		fmt.Sprint(s.ChunksCopied), fmt.Sprint(s.ChunksShared), (time.Duration(s.FreezePauseMicros) * time.Microsecond).String(), s.KeyID}
}

func snapshotCreate(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "snapshot name")
	src := f.requiredString("source", "the disk to snapshot")
	inc := f.Bool("incremental", false, "store only the chunks changed since the disk's previous incremental snapshot")
	des := f.String("disk-encryption-set", "", "wrap the snapshot's key with this set's key instead of the disk's")
	if err := f.parse(args); err != nil {
		return err
	}
	req := api.CreateSnapshotRequest{Name: *name, Source: *src, Incremental: *inc, DiskEncryptionSet: *des}
	s, err := withProgress(c, api.KindSnapshots, *name, func(h *api.Client) (*api.Snapshot, error) { return h.CreateSnapshot(c.Ctx, req) })
	if err != nil {
		return err
	}
	return c.show(s, snapshotHeader, [][]string{snapshotRow(s)})
}

func snapshotShow(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "snapshot name")
	if err := f.parse(args); err != nil {
		return err
	}
	s, err := onHost(c, func(h *api.Client) (*api.Snapshot, error) { return h.ShowSnapshot(c.Ctx, *name) })
	if err != nil {
		return err
	}
	return c.show(s, snapshotHeader, [][]string{snapshotRow(s)})
}

func snapshotList(c *Context, args []string) error {
	if err := newFlags(c).parse(args); err != nil {
		return err
	}
	ss, err := onHost(c, func(h *api.Client) ([]api.Snapshot, error) { return h.ListSnapshots(c.Ctx) })
	if err != nil {
		return err
	}
	return showList(c, ss, snapshotHeader, snapshotRow)
}

func snapshotUpdate(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "snapshot name")
	enc := f.String("encryption-type", "", "EncryptionAtRestWithPlatformKey to turn customer keys off")
	des := f.String("disk-encryption-set", "", "re-wrap under this set's key")
	if err := f.parse(args); err != nil {
		return err
	}
	req := api.UpdateSnapshotRequest{EncryptionType: *enc, DiskEncryptionSet: *des}
	s, err := onHost(c, func(h *api.Client) (*api.Snapshot, error) { return h.UpdateSnapshot(c.Ctx, *name, req) })
	if err != nil {
		return err
	}
	return c.show(s, snapshotHeader, [][]string{snapshotRow(s)})
}

func snapshotDelete(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "snapshot name")
	if err := f.parse(args); err != nil {
		return err
	}
	return onHostDo(c, func(h *api.Client) error { return h.DeleteSnapshot(c.Ctx, *name) })
}

var imageHeader = []string{"NAME", "SOURCE", "SIZE", "USED", "ENCRYPTION", "KEY"}

func imageRow(im *api.Image) []string {
	return []string{im.Name, im.SourceKind + " " + im.Source, units.FormatSize(im.DiskSizeBytes), units.FormatSize(im.UsedBytes),
		im.Encryption.Type, im.KeyID}
}

func imageCreate(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "image name")
	src := f.requiredString("source", "a disk (not in use) or a snapshot")
	des := f.String("disk-encryption-set", "", "encrypt the image under this set's key (default: a platform key)")
	if err := f.parse(args); err != nil {
		return err
	}
	req := api.CreateImageRequest{Name: *name, Source: *src, DiskEncryptionSet: *des}
	im, err := withProgress(c, api.KindImages, *name, func(h *api.Client) (*api.Image, error) { return h.CreateImage(c.Ctx, req) })
	if err != nil {
		return err
	}
	return c.show(im, imageHeader, [][]string{imageRow(im)})
}

func imageShow(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "image name")
	if err := f.parse(args); err != nil {
		return err
	}
	im, err := onHost(c, func(h *api.Client) (*api.Image, error) { return h.ShowImage(c.Ctx, *name) })
	if err != nil {
		return err
	}
	return c.show(im, imageHeader, [][]string{imageRow(im)})
}

func imageList(c *Context, args []string) error {
	if err := newFlags(c).parse(args); err != nil {
		return err
	}
	ims, err := onHost(c, func(h *api.Client) ([]api.Image, error) { return h.ListImages(c.Ctx) })
	if err != nil {
		return err
	}
	return showList(c, ims, imageHeader, imageRow)
}

func imageDelete(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "image name")
	if err := f.parse(args); err != nil {
		return err
	}
	return onHostDo(c, func(h *api.Client) error { return h.DeleteImage(c.Ctx, *name) })
}

// withProgress makes a call that copies data, creating the resource
// kind/name, and while it runs shows the copy's progress on stderr (see
// progressBar).
func withProgress[T any](c *Context, kind, name string, call func(*api.Client) (T, error)) (T, error) {
	h, err := c.host()
	if err != nil {
		var zero T
		return zero, err
	}
	type answer struct {
		v   T
		err error
	}
	done := make(chan answer, 1)
	go func() {
		v, err := call(h)
		done <- answer{v, err}
	}()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var bar *progressBar
	for {
		select {
		case a := <-done:
			switch {
			case bar == nil:
			case a.err == nil:
				bar.done()
			default:
				bar.finish()
			}
			return a.v, a.err
		case <-t.C:
			p, err := h.Progress(c.Ctx, kind, name)
			if err != nil || p.Total == 0 {
				continue
			}
			if bar == nil {
				bar = newProgressBar(c.Stderr, p.Operation)
			}
			bar.update(p.Done, p.Total)
		}
	}
}

// moveCmd moves a snapshot or image; it prints the resource as JSON or a
// one-line table with its new id.
func moveCmd(kind string, route string) func(*Context, []string) error {
	return func(c *Context, args []string) error {
		f := newFlags(c)
		name := f.requiredString("name", kind+" name")
		rg := f.requiredString("resource-group", "resource group to move the "+kind+" to")
		sub := f.String("subscription", "", "subscription to move the "+kind+" to (default: its own)")
		if err := f.parse(args); err != nil {
			return err
		}
		var out struct {
			Name string `json:"name"`
			ID   string `json:"id"`
		}
		var raw map[string]any
		err := onHostDo(c, func(h *api.Client) error {
			return h.Call(c.Ctx, route, api.MoveRequest{ResourceGroup: *rg, Subscription: *sub}, &raw, *name)
		})
		if err != nil {
			return err
		}
		out.Name, _ = raw["name"].(string)
		out.ID, _ = raw["id"].(string)
		return c.show(raw, []string{"NAME", "ID"}, [][]string{{out.Name, out.ID}})
	}
}
