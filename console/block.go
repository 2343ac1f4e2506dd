package console

import (
	"fmt"
	"net/http"

	"hostcrypt/control/api"
)

// BlockSize is the unit the block view shows: one block of the engine.
const BlockSize = 4096

// BlockRequest is the body of POST /api/block. A POST, not a GET: looking
// at a block may show guest data, which is recorded, and so is checked as
// an action (Origin) rather than a read.
type BlockRequest struct {
	VM     string `json:"vm"`
	Disk   string `json:"disk"`
	Offset int64  `json:"offset"`
	// Plaintext asks for what the guest reads beside the stored bytes;
	// only a console started with the demo flag shows it.
	Plaintext bool `json:"plaintext"`
}

// BlockAnswer is what POST /api/block answers.
type BlockAnswer struct {
	VM     string     `json:"vm"`
	Disk   string     `json:"disk"`
	Offset int64      `json:"offset"`
	Stored *BlockView `json:"stored"`
	// Guest is what the guest reads in the block, when shown.
	Guest []byte `json:"guest,omitempty"`
	// GuestNote says why Guest is absent.
	GuestNote string `json:"guestNote,omitempty"`
}

func (c *Console) block(w http.ResponseWriter, r *http.Request) {
	if c.cfg.Blocks == nil {
		c.fail(w, errorf(http.StatusNotFound, "the block view is not available on this host"))
		return
	}
	var req BlockRequest
	if err := decode(r, &req); err != nil {
		c.fail(w, err)
		return
	}
	if req.VM == "" || req.Disk == "" || req.Offset < 0 {
		c.fail(w, errorf(http.StatusBadRequest, "choose a VM, one of its disks and an offset of 0 or more"))
		return
	}
	// Only a running VM's disk is open; the host refuses any other too,
	// this says it plainly.
	if vm := c.vmOf(req.VM); vm == nil || vm.PowerState != api.PowerRunning {
		c.fail(w, errorf(http.StatusConflict, "VM %s is not running: the block view reads the disks of running VMs only", req.VM))
		return
	}
	off := req.Offset - req.Offset%BlockSize
	ctx, cancel := c.actionContext(r)
	defer cancel()
	v, err := c.cfg.Blocks.InspectBlock(ctx, req.VM, req.Disk, off)
	if err != nil {
		c.fail(w, err)
		return
	}
	ans := BlockAnswer{VM: req.VM, Disk: req.Disk, Offset: off, Stored: v}
	switch {
	case !req.Plaintext:
	case !c.cfg.DemoPlaintext:
		ans.GuestNote = "what the guest reads is shown only when hostcryptd runs with --web-demo-plaintext"
	default:
		buf := make([]byte, BlockSize)
		n, err := c.cfg.Blocks.ReadGuest(ctx, req.VM, req.Disk, buf, off)
		if err != nil {
			c.fail(w, err)
			return
		}
		ans.Guest = buf[:n]
		// Recorded before it is answered: a view that is not in the log
		// does not happen.
		c.log.Warn("console: guest plaintext shown", "vm", req.VM, "disk", req.Disk, "offset", off, "bytes", n, "from", r.RemoteAddr)
		c.timeline.add("plaintext", "warn", fmt.Sprintf("plaintext of VM %s disk %s at offset %d shown in the console", req.VM, req.Disk, off),
			"hostcryptd runs with --web-demo-plaintext; every such view is logged")
	}
	writeJSON(w, http.StatusOK, ans)
}

// vmOf returns the VM of the last reading, or nil.
func (c *Console) vmOf(name string) *api.VM {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.state.VMs {
		if c.state.VMs[i].Name == name {
			vm := c.state.VMs[i]
			return &vm
		}
	}
	return nil
}
