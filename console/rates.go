package console

import (
	"net/http"
	"time"

	"hostcrypt/control/api"
)

// RateSeries is one disk's recent rates, as GET /api/rates answers them.
type RateSeries struct {
	VM     string      `json:"vm"`
	Disk   string      `json:"disk"`
	Points []RateShown `json:"points"`
}

// RateShown is a RatePoint with latencies in milliseconds.
type RateShown struct {
	T              time.Time `json:"t"`
	ReadOps        float64   `json:"readOps"`
	WriteOps       float64   `json:"writeOps"`
	ReadLatencyMs  float64   `json:"readLatencyMs"`
	WriteLatencyMs float64   `json:"writeLatencyMs"`
}

// RatesAnswer is what GET /api/rates answers.
type RatesAnswer struct {
	Available bool         `json:"available"`
	Note      string       `json:"note,omitempty"`
	Disks     []RateSeries `json:"disks"`
}

func (c *Console) serveRates(w http.ResponseWriter, r *http.Request) {
	c.asked()
	ans := RatesAnswer{Available: c.cfg.Rates != nil, Disks: []RateSeries{}}
	if c.cfg.Rates == nil {
		ans.Note = "per-disk rates are not available on this host"
		writeJSON(w, http.StatusOK, ans)
		return
	}
	c.mu.Lock()
	vms := c.state.VMs
	c.mu.Unlock()
	for _, vm := range vms {
		if vm.PowerState != api.PowerRunning {
			continue
		}
		for _, d := range append([]api.AttachedDisk{vm.StorageProfile.OsDisk}, vm.StorageProfile.DataDisks...) {
			if d.Name == "" {
				continue
			}
			s := RateSeries{VM: vm.Name, Disk: d.Name, Points: []RateShown{}}
			for _, p := range c.cfg.Rates.Recent(vm.Name, d.Name) {
				s.Points = append(s.Points, RateShown{T: p.T.UTC(), ReadOps: p.ReadOps, WriteOps: p.WriteOps,
					ReadLatencyMs: ms(p.ReadLatency), WriteLatencyMs: ms(p.WriteLatency)})
			}
			ans.Disks = append(ans.Disks, s)
		}
	}
	writeJSON(w, http.StatusOK, ans)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
