package control

import "hostcrypt/control/api"

// Recorder is told what the enforcement loops find (the metrics). Its
// methods are called from those loops, never under the control lock; they
// must not block.
type Recorder interface {
	// KeyChecked is called once per check of the customer key of running
	// VM vm's disk, with what the check found: usable, revoked, expired,
	// unreachable or other (keys.Problem's names).
	KeyChecked(vm, disk, result string)
	// Rewrapping says how far the rotation of disk encryption set des is:
	// done of the total resources under an older key version re-wrapped
	// (failures not counted). It is called with done 0 as a rotation
	// starts, then after each resource.
	Rewrapping(des string, done, total int)
}

type noRecorder struct{}

func (noRecorder) KeyChecked(string, string, string) {}
func (noRecorder) Rewrapping(string, int, int)       {}

// Copies returns the long copies in progress (snapshots, disks from
// snapshots, images, conversions), by the resource each creates
// ("snapshots/s1"), read under the progress table's own lock only: never
// behind the control lock or a copy.
func (h *Host) Copies() map[string]api.CopyProgress {
	h.prog.mu.Lock()
	defer h.prog.mu.Unlock()
	out := make(map[string]api.CopyProgress, len(h.prog.m))
	for k, p := range h.prog.m {
		out[k] = *p
	}
	return out
}
