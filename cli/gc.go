package cli

import (
	"fmt"
	"strings"

	"hostcrypt/control/api"
)

func hostCommands() []Command {
	return []Command{
		{"host", "gc", "list (--dry-run true) or remove what no record owns: leftovers of creations cut short, unfinished deletions, orphaned temp disks and host caches", hostGC},
		{"host", "list", "list the hosts that use the store (several on a shared rados:// pool): their state (alive, lost) and the VMs they run", hostList},
	}
}

var hostHeader = []string{"NAME", "STATE", "VMS", "THIS"}

func hostRow(h *api.HostInfo) []string {
	this := ""
	if h.This {
		this = "*"
	}
	return []string{h.Name, h.State, orDash(strings.Join(h.VMs, ",")), this}
}

func hostList(c *Context, args []string) error {
	if err := newFlags(c).parse(args); err != nil {
		return err
	}
	hs, err := onHost(c, func(h *api.Client) ([]api.HostInfo, error) { return h.ListHosts(c.Ctx) })
	if err != nil {
		return err
	}
	return showList(c, hs, hostHeader, hostRow)
}

var gcHeader = []string{"WHERE", "PATH", "SIZE", "REASON", "ACTION"}

func gcRow(dryRun bool) func(l *api.Leftover) []string {
	return func(l *api.Leftover) []string {
		action := "removed"
		switch {
		case dryRun:
			action = "would remove"
		case l.Error != "":
			action = "not removed: " + l.Error
		}
		return []string{l.Where, l.Path, formatSize(l.UsedBytes), l.Reason, action}
	}
}

// hostGC removes, or with --dry-run true lists, the leftovers: objects of
// disks, snapshots and images no record owns, temp disks of VMs that do not
// exist, host caches of disks that do not exist. Start-up only lists them
// in hostcryptd's log; this is the one way they go.
func hostGC(c *Context, args []string) error {
	f := newFlags(c)
	dry := f.boolValue("dry-run", "true lists what would be removed and removes nothing")
	if err := f.parse(args); err != nil {
		return err
	}
	rep, err := onHost(c, func(h *api.Client) (*api.GCReport, error) { return h.GC(c.Ctx, api.GCRequest{DryRun: dry.val}) })
	if err != nil {
		return err
	}
	if rep.Leftovers == nil {
		rep.Leftovers = []api.Leftover{}
	}
	rows := make([][]string, 0, len(rep.Leftovers))
	failed := 0
	for i := range rep.Leftovers {
		rows = append(rows, gcRow(rep.DryRun)(&rep.Leftovers[i]))
		if !rep.DryRun && !rep.Leftovers[i].Removed {
			failed++
		}
	}
	if c.Output == "table" {
		verb := "removed"
		if rep.DryRun {
			verb = "would remove"
		}
		fmt.Fprintf(c.Stderr, "host gc: %s %d leftover(s)\n", verb, len(rep.Leftovers)-failed)
	}
	if err := c.show(rep, gcHeader, rows); err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%s: %d leftover(s) could not be removed (see ACTION); fix the cause and run it again", c.Command, failed)
	}
	return nil
}
