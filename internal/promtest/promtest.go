// Package promtest reads Prometheus' text format for tests: a scrape parsed
// into families, and the value of one series.
package promtest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"hostcrypt/internal/testenv"
)

// Scrape is one scrape: its text and its families by name.
type Scrape struct {
	Text     string
	Families map[string]*dto.MetricFamily
}

// Parse parses text in Prometheus' text format.
func Parse(t testing.TB, text string) *Scrape {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("the scrape is not Prometheus text: %v\n%s", err, text)
	}
	return &Scrape{Text: text, Families: fams}
}

// Handler scrapes h.
func Handler(t testing.TB, h http.Handler) *Scrape {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	if w.Code != http.StatusOK {
		t.Fatalf("scrape: status %d: %s", w.Code, w.Body.String())
	}
	return Parse(t, w.Body.String())
}

// Get scrapes url with c (http.DefaultClient if nil).
func Get(t testing.TB, c *http.Client, url string) *Scrape {
	t.Helper()
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: status %d, %v: %s", url, resp.StatusCode, err, b)
	}
	return Parse(t, string(b))
}

// match tells whether m has every label of labels ("name=value").
func match(m *dto.Metric, labels []string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for _, kv := range labels {
		k, v, _ := strings.Cut(kv, "=")
		if have[k] != v {
			return false
		}
	}
	return true
}

// Value returns the value of the one series of family name whose labels
// include labels ("name=value"): a counter's or gauge's value, a
// histogram's count. ok is false when there is no such series.
func (s *Scrape) Value(name string, labels ...string) (v float64, ok bool) {
	f := s.Families[name]
	if f == nil {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		if !match(m, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// Must is Value, failing t when the series is missing.
func (s *Scrape) Must(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	v, ok := s.Value(name, labels...)
	if !ok {
		t.Fatalf("no series %s%v in the scrape", name, labels)
	}
	return v
}

// Count is how many series family name has whose labels include labels.
func (s *Scrape) Count(name string, labels ...string) int {
	n := 0
	if f := s.Families[name]; f != nil {
		for _, m := range f.GetMetric() {
			if match(m, labels) {
				n++
			}
		}
	}
	return n
}

// Sum adds the values (counts, for histograms) of every series of family
// name whose labels include labels.
func (s *Scrape) Sum(name string, labels ...string) float64 {
	var sum float64
	if f := s.Families[name]; f != nil {
		for _, m := range f.GetMetric() {
			if !match(m, labels) {
				continue
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount()) + m.GetUntyped().GetValue()
		}
	}
	return sum
}

// LabelNames lists every label name the scrape uses, sorted.
func (s *Scrape) LabelNames() []string {
	set := map[string]bool{}
	for _, f := range s.Families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				set[l.GetName()] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Promtool returns the path of promtool (Debian's prometheus package; see
// scripts/deps.sh). It fails t in CI when promtool is missing and skips
// otherwise.
func Promtool(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err == nil {
		return p
	}
	if testenv.InCI() {
		t.Fatalf("promtool is missing (apt-get install prometheus; scripts/deps.sh installs it)")
	}
	t.Skip("promtool is missing (apt-get install prometheus; scripts/deps.sh installs it)")
	return ""
}

// CheckMetrics runs `promtool check metrics` on the scrape's text and
// fails t with what it says.
func (s *Scrape) CheckMetrics(t testing.TB) {
	t.Helper()
	cmd := exec.Command(Promtool(t), "check", "metrics")
	cmd.Stdin = strings.NewReader(s.Text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
}
