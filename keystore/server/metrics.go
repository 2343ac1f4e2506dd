package server

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	bolt "go.etcd.io/bbolt"
)

// serverMetrics are the key store's Prometheus metrics (docs/OBSERVABILITY.md).
// Labels are operation names, results, key sizes, event types and key
// states: never a vault, key name, caller or token.
type serverMetrics struct {
	reg         *prometheus.Registry
	requests    *prometheus.CounterVec
	keyOps      *prometheus.HistogramVec
	auditAppend prometheus.Histogram
	events      *prometheus.CounterVec
	authFailed  prometheus.Counter
}

// keyOpBuckets bound the wrap and unwrap latencies, in seconds: an AES key
// wrap takes microseconds, an RSA-4096 unwrap tens of milliseconds.
var keyOpBuckets = []float64{10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3}

// auditBuckets bound an audit append, which ends in an fsync.
var auditBuckets = []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1}

func newServerMetrics(s *Server) *serverMetrics {
	m := &serverMetrics{reg: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hostcrypt_keystore_requests_total",
		Help: "Requests answered, by operation (as the audit log names it) and result (Success, Unauthorized, Forbidden, NotFound, Throttled, BadRequest, Failed).",
	}, []string{"operation", "result"})
	m.keyOps = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "hostcrypt_keystore_key_operation_duration_seconds",
		Help:    "Time a wrap or unwrap took in the key store's crypto, by operation and key size in bits.",
		Buckets: keyOpBuckets,
	}, []string{"operation", "key_size"})
	m.auditAppend = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "hostcrypt_keystore_audit_append_duration_seconds",
		Help:    "Time an audit line took to be appended and made durable; every request waits for its own.",
		Buckets: auditBuckets,
	})
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hostcrypt_keystore_events_total",
		Help: "Key events emitted, by type (KeyNewVersionCreated, KeyNearExpiry, KeyExpired, ...).",
	}, []string{"type"})
	m.authFailed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "hostcrypt_keystore_failed_authentications_total",
		Help: "Requests refused for a missing or invalid token, throttled ones included.",
	})
	m.reg.MustRegister(m.requests, m.keyOps, m.auditAppend, m.events, m.authFailed, keyStates{s},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// MetricsHandler serves the key store's metrics in Prometheus' text format.
func (s *Server) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.met.reg, promhttp.HandlerOpts{Registry: s.met.reg})
}

// MetricsTLS is a TLS configuration with the key store's own certificate,
// to serve the metrics to the network with (verified with ca.pem, under
// --listen's host name).
func (s *Server) MetricsTLS() *tls.Config { return s.http.TLSConfig.Clone() }

// keyStates counts the keys by the state of their current version, read
// from a read transaction on each scrape: it never waits for a writer.
type keyStates struct{ s *Server }

var descKeys = prometheus.NewDesc("hostcrypt_keystore_keys",
	"Keys by the state of their current version: enabled, disabled, expired (past exp), deleted (recoverable until purged).",
	[]string{"state"}, nil)

func (k keyStates) Describe(ch chan<- *prometheus.Desc) { ch <- descKeys }

func (k keyStates) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]float64{"enabled": 0, "disabled": 0, "expired": 0, "deleted": 0}
	now := k.s.clock.Now()
	err := k.s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketKeys).ForEach(func(_, raw []byte) error {
			var st struct {
				Versions []struct {
					Enabled bool       `json:"enabled"`
					EXP     *time.Time `json:"exp"`
				} `json:"versions"`
				Deleted *time.Time `json:"deletedDate"`
			}
			if json.Unmarshal(raw, &st) != nil || len(st.Versions) == 0 {
				return nil
			}
			cur := st.Versions[len(st.Versions)-1]
			switch {
			case st.Deleted != nil:
				counts["deleted"]++
			case !cur.Enabled:
				counts["disabled"]++
			case cur.EXP != nil && !now.Before(*cur.EXP):
				counts["expired"]++
			default:
				counts["enabled"]++
			}
			return nil
		})
	})
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descKeys, err)
		return
	}
	for state, n := range counts {
		ch <- prometheus.MustNewConstMetric(descKeys, prometheus.GaugeValue, n, state)
	}
}

// keyOpTimer returns the observer of a wrap or unwrap with a key of size
// bits.
func (m *serverMetrics) keyOpTimer(wrap bool, bits int) prometheus.Observer {
	op := "unwrap"
	if wrap {
		op = "wrap"
	}
	return m.keyOps.WithLabelValues(op, strconv.Itoa(bits))
}

// eventType is an event's type as the metrics name it: without the
// Microsoft.KeyVault. prefix.
func eventType(typ string) string { return strings.TrimPrefix(typ, eventPrefix) }
