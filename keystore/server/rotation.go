package server

import (
	"hostcrypt/keystore/api"

	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

type rotationPolicy struct {
	LifetimeActions []api.LifetimeAction `json:"lifetimeActions"`
	ExpiryTime      string               `json:"expiryTime,omitempty"`
	Created         time.Time            `json:"created"`
	Updated         time.Time            `json:"updated"`
}

// defaultNotify is Key Vault's default: notify 30 days before expiry.
var defaultPolicy = rotationPolicy{LifetimeActions: []api.LifetimeAction{{Trigger: api.Trigger{TimeBeforeExpiry: "P30D"}, Action: api.Action{Type: "Notify"}}}}

// isoDuration is an ISO-8601 duration: calendar parts plus a clock part.
type isoDuration struct {
	years, months, days int
	clock               time.Duration
}

var isoRE = regexp.MustCompile(`^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$`)

func parseISODuration(s string) (isoDuration, error) {
	m := isoRE.FindStringSubmatch(s)
	if m == nil || s == "P" || strings.HasSuffix(s, "T") {
		return isoDuration{}, fmt.Errorf("%q is not an ISO-8601 duration such as P90D, P1Y, P2M or PT48H", s)
	}
	n := make([]int, 8)
	for i := 1; i < 8; i++ {
		if m[i] != "" {
			v, err := strconv.Atoi(m[i])
			if err != nil || v > 100000 {
				return isoDuration{}, fmt.Errorf("%q: number out of range", s)
			}
			n[i] = v
		}
	}
	return isoDuration{years: n[1], months: n[2], days: n[3]*7 + n[4],
		clock: time.Duration(n[5])*time.Hour + time.Duration(n[6])*time.Minute + time.Duration(n[7])*time.Second}, nil
}

func (d isoDuration) addTo(t time.Time) time.Time {
	return t.AddDate(d.years, d.months, d.days).Add(d.clock)
}

func (d isoDuration) subFrom(t time.Time) time.Time {
	return t.AddDate(-d.years, -d.months, -d.days).Add(-d.clock)
}

// approx is the duration measured from a fixed reference, for validation.
func (d isoDuration) approx() time.Duration {
	ref := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	return d.addTo(ref).Sub(ref)
}

const day = 24 * time.Hour

// maxPolicyDuration bounds every duration of a rotation policy: a new
// version's exp is its creation plus expiryTime, and must stay a time that
// can be stored (see maxUnixTime) for as long as the store runs.
const maxPolicyDuration = 36525 * day // P100Y

func checkPolicyDuration(field, v string, d isoDuration) error {
	ref := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	if end := d.addTo(ref); end.Year() > 2101 || end.Sub(ref) > maxPolicyDuration {
		return badParam("%s %s is too long; the maximum is 100 years (P100Y)", field, v)
	}
	return nil
}

// validatePolicy checks a policy as Key Vault does and normalises it.
func validatePolicy(p *rotationPolicy) error {
	var expiry time.Duration
	if p.ExpiryTime != "" {
		d, err := parseISODuration(p.ExpiryTime)
		if err != nil {
			return badParam("expiryTime: %v", err)
		}
		if err := checkPolicyDuration("expiryTime", p.ExpiryTime, d); err != nil {
			return err
		}
		if expiry = d.approx(); expiry < 28*day {
			return badParam("expiryTime %s is too short; it must be at least 28 days (P28D)", p.ExpiryTime)
		}
	}
	seen := map[string]bool{}
	for i := range p.LifetimeActions {
		la := &p.LifetimeActions[i]
		typ, ok := canonical([]string{"Rotate", "Notify"}, la.Action.Type)
		if !ok {
			return badParam("lifetimeActions[%d].action.type %q is not valid; use Rotate or Notify", i, la.Action.Type)
		}
		la.Action.Type = typ
		if seen[typ] {
			return badParam("a rotation policy has at most one %s action", typ)
		}
		seen[typ] = true
		t := la.Trigger
		if (t.TimeAfterCreate == "") == (t.TimeBeforeExpiry == "") {
			return badParam("lifetimeActions[%d].trigger needs exactly one of timeAfterCreate and timeBeforeExpiry", i)
		}
		if typ == "Notify" && t.TimeAfterCreate != "" {
			return badParam("a Notify action triggers only on timeBeforeExpiry")
		}
		for field, v := range map[string]string{"timeAfterCreate": t.TimeAfterCreate, "timeBeforeExpiry": t.TimeBeforeExpiry} {
			if v == "" {
				continue
			}
			d, err := parseISODuration(v)
			if err != nil {
				return badParam("lifetimeActions[%d].trigger.%s: %v", i, field, err)
			}
			if err := checkPolicyDuration(fmt.Sprintf("lifetimeActions[%d].trigger.%s", i, field), v, d); err != nil {
				return err
			}
			if d.approx() < 7*day {
				return badParam("lifetimeActions[%d].trigger.%s %s is too short; the minimum is 7 days (P7D)", i, field, v)
			}
			if expiry > 0 && d.approx() > expiry-7*day {
				return badParam("lifetimeActions[%d].trigger.%s %s must be at least 7 days shorter than expiryTime %s", i, field, v, p.ExpiryTime)
			}
		}
	}
	return nil
}

func (s *Server) policyJSON(k *key) api.RotationPolicy {
	p := k.Policy
	if p == nil {
		p = &defaultPolicy
	}
	out := api.RotationPolicy{
		ID:              s.baseURL + "/vaults/" + k.Vault + "/keys/" + k.Name + "/rotationpolicy",
		LifetimeActions: p.LifetimeActions,
		Attributes:      api.RotationPolicyAttributes{ExpiryTime: p.ExpiryTime},
	}
	if k.Policy != nil {
		out.Attributes.Created, out.Attributes.Updated = unixPtr(&p.Created), unixPtr(&p.Updated)
	}
	return out
}

func (s *Server) getRotationPolicy(c *call) (any, error) {
	var out api.RotationPolicy
	err := s.db.View(func(tx *bolt.Tx) error {
		_, k, err := c.vaultKey(tx, "getrotationpolicy")
		if err == nil {
			out = s.policyJSON(k)
		}
		return err
	})
	return out, err
}

func (s *Server) setRotationPolicy(c *call) (any, error) {
	var req api.RotationPolicy
	if err := decode(c, &req); err != nil {
		return nil, err
	}
	p := rotationPolicy{LifetimeActions: req.LifetimeActions}
	p.ExpiryTime = req.Attributes.ExpiryTime
	if err := validatePolicy(&p); err != nil {
		return nil, err
	}
	var out api.RotationPolicy
	err := s.db.Update(func(tx *bolt.Tx) error {
		_, k, err := c.vaultKey(tx, "setrotationpolicy")
		if err != nil {
			return err
		}
		if strings.HasPrefix(k.current().Kty, "oct") {
			return badParam("platform key %s is rotated by the platform, not by a policy", k.Name)
		}
		now := s.clock.Now().UTC()
		if len(p.LifetimeActions) == 0 && p.ExpiryTime == "" {
			k.Policy = nil // an empty policy restores the default
		} else {
			p.Created, p.Updated = now, now
			if k.Policy != nil {
				p.Created = k.Policy.Created
			}
			if p.LifetimeActions == nil {
				p.LifetimeActions = []api.LifetimeAction{}
			}
			k.Policy = &p
		}
		if err := saveKey(tx, k); err != nil {
			return err
		}
		out = s.policyJSON(k)
		return nil
	})
	return out, err
}

func (p *rotationPolicy) action(typ string) *api.Trigger {
	for i := range p.LifetimeActions {
		if p.LifetimeActions[i].Action.Type == typ {
			return &p.LifetimeActions[i].Trigger
		}
	}
	return nil
}

type rotation struct {
	vault, name string
	cur         keyVersion
}

// duePass finds what the clock has made due at now. With apply it raises
// the events, marks the versions and purges inside tx; it returns the
// rotations to run, which generate keys outside any transaction.
func (s *Server) duePass(tx *bolt.Tx, now time.Time, apply bool) (work bool, due []rotation, err error) {
	var keys []*key
	err = tx.Bucket(bucketKeys).ForEach(func(_, raw []byte) error {
		var k key
		if err := jsonUnmarshal(raw, &k); err != nil {
			return err
		}
		keys = append(keys, &k)
		return nil
	})
	if err != nil {
		return false, nil, err
	}
	for _, k := range keys {
		if k.Deleted != nil {
			if k.PurgeAfter != nil && !now.Before(*k.PurgeAfter) {
				work = true
				if apply {
					if err := s.purge(tx, k); err != nil {
						return work, nil, err
					}
				}
			}
			continue
		}
		p := k.Policy
		if p == nil {
			p = &defaultPolicy
		}
		var notify *isoDuration
		if t := p.action("Notify"); t != nil {
			d, _ := parseISODuration(t.TimeBeforeExpiry)
			notify = &d
		}
		changed := false
		for _, kv := range k.Versions {
			if kv.EXP == nil {
				continue
			}
			if notify != nil && !kv.Notified && !now.Before(notify.subFrom(*kv.EXP)) && now.Before(*kv.EXP) {
				kv.Notified, changed = true, true
				if apply {
					if err := s.emitKeyEvent(tx, "KeyNearExpiry", k, kv); err != nil {
						return true, nil, err
					}
				}
			}
			if !kv.Expired && !now.Before(*kv.EXP) {
				kv.Expired, kv.Notified, changed = true, true, true
				if apply {
					if err := s.emitKeyEvent(tx, "KeyExpired", k, kv); err != nil {
						return true, nil, err
					}
				}
			}
		}
		if changed {
			work = true
			if apply {
				if err := saveKey(tx, k); err != nil {
					return work, nil, err
				}
			}
		}
		if t := p.action("Rotate"); t != nil {
			cur := k.current()
			rotate := false
			if t.TimeAfterCreate != "" {
				d, _ := parseISODuration(t.TimeAfterCreate)
				rotate = !now.Before(d.addTo(cur.Created))
			} else if cur.EXP != nil {
				d, _ := parseISODuration(t.TimeBeforeExpiry)
				rotate = !now.Before(d.subFrom(*cur.EXP))
			}
			if rotate {
				work = true
				due = append(due, rotation{k.Vault, k.Name, *cur})
			}
		}
	}
	return work, due, nil
}

// RunDue runs everything the clock has made due: near-expiry and expiry
// events, policy rotations and purges of soft-deleted keys past their
// retention. The scheduler calls it every tick; tests call it after moving
// the clock.
func (s *Server) RunDue() error {
	s.runMu.Lock()
	defer s.runMu.Unlock()
	now := s.clock.Now()
	// Look first in a read transaction: most passes find nothing to do,
	// and a write transaction would cost an fsync every tick.
	var work bool
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		work, _, err = s.duePass(tx, now, false)
		return err
	})
	if err != nil || !work {
		return err
	}
	var due []rotation
	err = s.db.Update(func(tx *bolt.Tx) error {
		var err error
		_, due, err = s.duePass(tx, now, true)
		return err
	})
	if err != nil {
		return err
	}
	for _, r := range due {
		kv, err := s.newVersionLike(r.vault, r.name, &r.cur)
		if err != nil {
			return err
		}
		err = s.db.Update(func(tx *bolt.Tx) error {
			k, err := loadKey(tx, r.vault, r.name)
			if err != nil || k.current().Version != r.cur.Version {
				return nil // deleted or rotated meanwhile
			}
			if k.Policy != nil && k.Policy.ExpiryTime != "" {
				d, _ := parseISODuration(k.Policy.ExpiryTime)
				exp := d.addTo(kv.Created)
				kv.EXP = &exp
			}
			k.Versions = append(k.Versions, kv)
			if err := saveKey(tx, k); err != nil {
				return err
			}
			s.log.Info("key rotated by its policy", "vault", r.vault, "key", r.name, "version", kv.Version)
			return s.emitKeyEvent(tx, "KeyNewVersionCreated", k, kv)
		})
		if err != nil {
			return err
		}
	}
	return nil
}
