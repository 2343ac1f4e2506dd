package cli

import (
	"fmt"
	"time"

	"hostcrypt/control"
	"hostcrypt/internal/units"
)

func snapshotCommands() []Command {
	return []Command{
		{"snapshot", "create", "take a snapshot of a disk, also while its VM runs (--incremental: only what changed)", snapshotCreate},
		{"snapshot", "show", "show a snapshot", snapshotShow},
		{"snapshot", "list", "list snapshots", snapshotList},
		{"snapshot", "update", "switch a snapshot between platform and customer keys (its key is re-wrapped)", snapshotUpdate},
		{"snapshot", "delete", "delete a snapshot: its wrapped key first, then its data", snapshotDelete},
		{"snapshot", "move", "move a snapshot to another resource group (customer-key snapshots stay in their subscription)", moveCmd("snapshot", "snapshots")},
	}
}

func imageCommands() []Command {
	return []Command{
		{"image", "create", "make an image from a disk not in use or from a snapshot (a copy under its own key)", imageCreate},
		{"image", "show", "show an image", imageShow},
		{"image", "list", "list images", imageList},
		{"image", "delete", "delete an image: its wrapped key first, then its data", imageDelete},
		{"image", "move", "move an image to another resource group (customer-key images stay in their subscription)", moveCmd("image", "images")},
	}
}

var snapshotHeader = []string{"NAME", "SOURCE", "INCREMENTAL", "SIZE", "USED", "COPIED", "SHARED", "PAUSE", "KEY"}

func snapshotRow(s *control.Snapshot) []string {
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
	var s control.Snapshot
	req := control.CreateSnapshotRequest{Name: *name, Source: *src, Incremental: *inc, DiskEncryptionSet: *des}
	if err := c.callWithProgress("POST", "/snapshots", req, &s, "snapshots", *name); err != nil {
		return err
	}
	return c.show(&s, snapshotHeader, [][]string{snapshotRow(&s)})
}

func snapshotShow(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "snapshot name")
	if err := f.parse(args); err != nil {
		return err
	}
	var s control.Snapshot
	if err := c.call("GET", "/snapshots/"+esc(*name), nil, &s); err != nil {
		return err
	}
	return c.show(&s, snapshotHeader, [][]string{snapshotRow(&s)})
}

func snapshotList(c *Context, args []string) error {
	if err := newFlags(c).parse(args); err != nil {
		return err
	}
	var ss []control.Snapshot
	if err := c.call("GET", "/snapshots", nil, &ss); err != nil {
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
	var s control.Snapshot
	if err := c.call("PATCH", "/snapshots/"+esc(*name), control.UpdateSnapshotRequest{EncryptionType: *enc, DiskEncryptionSet: *des}, &s); err != nil {
		return err
	}
	return c.show(&s, snapshotHeader, [][]string{snapshotRow(&s)})
}

func snapshotDelete(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "snapshot name")
	if err := f.parse(args); err != nil {
		return err
	}
	return c.call("DELETE", "/snapshots/"+esc(*name), nil, nil)
}

var imageHeader = []string{"NAME", "SOURCE", "SIZE", "USED", "ENCRYPTION", "KEY"}

func imageRow(im *control.Image) []string {
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
	var im control.Image
	req := control.CreateImageRequest{Name: *name, Source: *src, DiskEncryptionSet: *des}
	if err := c.callWithProgress("POST", "/images", req, &im, "images", *name); err != nil {
		return err
	}
	return c.show(&im, imageHeader, [][]string{imageRow(&im)})
}

func imageShow(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "image name")
	if err := f.parse(args); err != nil {
		return err
	}
	var im control.Image
	if err := c.call("GET", "/images/"+esc(*name), nil, &im); err != nil {
		return err
	}
	return c.show(&im, imageHeader, [][]string{imageRow(&im)})
}

func imageList(c *Context, args []string) error {
	if err := newFlags(c).parse(args); err != nil {
		return err
	}
	var ims []control.Image
	if err := c.call("GET", "/images", nil, &ims); err != nil {
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
	return c.call("DELETE", "/images/"+esc(*name), nil, nil)
}

// callWithProgress makes a call that copies data and, while it runs, shows
// the copy's progress on stderr (see progressBar).
func (c *Context) callWithProgress(method, path string, in, out any, kind, name string) error {
	// Resolve the endpoint once, before two goroutines use it.
	if _, err := c.HostSocket(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- c.call(method, path, in, out) }()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var bar *progressBar
	for {
		select {
		case err := <-done:
			switch {
			case bar == nil:
			case err == nil:
				bar.done()
			default:
				bar.finish()
			}
			return err
		case <-t.C:
			var p struct {
				Operation   string `json:"operation"`
				Done, Total int64
			}
			if c.call("GET", "/progress/"+kind+"/"+esc(name), nil, &p) != nil || p.Total == 0 {
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
func moveCmd(kind, path string) func(*Context, []string) error {
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
		if err := c.call("POST", "/"+path+"/"+esc(*name)+"/move", control.MoveRequest{ResourceGroup: *rg, Subscription: *sub}, &raw); err != nil {
			return err
		}
		out.Name, _ = raw["name"].(string)
		out.ID, _ = raw["id"].(string)
		return c.show(raw, []string{"NAME", "ID"}, [][]string{{out.Name, out.ID}})
	}
}
