// Package location parses where hostcryptd keeps its persisted disks, the
// value of --storage, and opens the storage.Backend there. A location is
// either a directory path or a RADOS pool:
//
//	/var/lib/hostcrypt/storage
//	rados://POOL[/NAMESPACE][?conf=FILE][&id=USER][&timeout=DURATION]
//
// conf is the ceph.conf naming the monitors and the keyring (default:
// librados' own search, $CEPH_CONF then /etc/ceph/ceph.conf), id the cephx
// user without "client." (default admin), timeout the bound of every RADOS
// call (default 30s). No key or secret goes into a location: the keyring
// that the configuration names holds it.
//
// A build without the ceph tag parses rados:// locations but cannot open
// them; Open then says what to install and how to build.
package location

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"hostcrypt/storage"
	"hostcrypt/storage/local"
	"hostcrypt/storage/rados"
)

// Scheme is the URL scheme of a RADOS location.
const Scheme = "rados"

const usage = "rados://POOL[/NAMESPACE]?conf=FILE&id=USER"

// ErrNoRADOS is returned, wrapped, when a build without the ceph tag is
// given a rados:// location.
var ErrNoRADOS = errors.New("this build has no RADOS support: " +
	"install librados (scripts/deps.sh ceph, or apt-get install librados-dev) and build with `make build-ceph` " +
	"(go build -tags ceph,pacific), then run bin/hostcryptd-ceph")

// A Location is a parsed storage location: exactly one of Dir and RADOS is
// set.
type Location struct {
	// Dir is the directory of a local location.
	Dir string
	// RADOS is the pool of a rados:// location.
	RADOS *rados.Config
}

// scheme matches the start of anything written as a URL, so that a typo in
// the scheme is an error rather than a directory named after it.
var scheme = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)

// Parse parses a --storage value: a rados:// URL, or else a directory path.
// Anything else that looks like a URL (http://..., rados:pool) is an error.
func Parse(s string) (Location, error) {
	if s == "" {
		return Location{}, errors.New("no storage location given: a directory or " + usage)
	}
	m := scheme.FindString(s)
	if m == "" {
		return Location{Dir: s}, nil
	}
	if !strings.EqualFold(m, Scheme+":") {
		if strings.HasPrefix(s[len(m):], "//") {
			return Location{}, fmt.Errorf("storage location %q: unknown scheme %q: give a directory or %s", s, strings.TrimSuffix(m, ":"), usage)
		}
		// "c:x" or "name:with:colons" without "//" is a relative path.
		return Location{Dir: s}, nil
	}
	cfg, err := parseRADOS(s[len(m):])
	if err != nil {
		return Location{}, fmt.Errorf("storage location %q: %w", s, err)
	}
	return Location{RADOS: cfg}, nil
}

// parseRADOS parses what follows "rados:".
func parseRADOS(rest string) (*rados.Config, error) {
	if !strings.HasPrefix(rest, "//") {
		return nil, fmt.Errorf("a RADOS location starts with rados:// (%s)", usage)
	}
	rest = rest[2:]
	if i := strings.IndexByte(rest, '#'); i >= 0 {
		return nil, errors.New("a RADOS location has no #fragment")
	}
	where, query, _ := strings.Cut(rest, "?")
	if strings.Contains(where, "@") {
		return nil, errors.New("give the cephx user as ?id=USER, not USER@POOL")
	}
	poolEsc, nsEsc, hasNS := strings.Cut(where, "/")
	pool, err := url.PathUnescape(poolEsc)
	if err != nil {
		return nil, fmt.Errorf("pool %q: %w", poolEsc, err)
	}
	if pool == "" {
		return nil, fmt.Errorf("no pool given (%s)", usage)
	}
	cfg := &rados.Config{Pool: pool}
	if hasNS {
		ns, err := url.PathUnescape(nsEsc)
		if err != nil {
			return nil, fmt.Errorf("namespace %q: %w", nsEsc, err)
		}
		if strings.Contains(nsEsc, "/") {
			return nil, fmt.Errorf("namespace %q: a namespace is one path segment", ns)
		}
		if ns == "" {
			return nil, fmt.Errorf("empty namespace after %q/: drop the '/' for the pool's default namespace", pool)
		}
		cfg.Namespace = ns
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return nil, fmt.Errorf("query %q: %w", query, err)
	}
	for k, v := range q {
		if len(v) > 1 {
			return nil, fmt.Errorf("%s is given %d times", k, len(v))
		}
		val := v[0]
		switch k {
		case "conf":
			if val == "" {
				return nil, errors.New("conf is empty: give the path of a ceph.conf, or leave conf out for the default")
			}
			if cfg.ConfFile, err = filepath.Abs(val); err != nil {
				return nil, fmt.Errorf("conf %q: %w", val, err)
			}
		case "id":
			cfg.User = strings.TrimPrefix(val, "client.")
			if cfg.User == "" {
				return nil, errors.New("id is empty: give a cephx user, e.g. id=admin")
			}
		case "timeout":
			d, err := time.ParseDuration(val)
			if err != nil {
				return nil, fmt.Errorf("timeout %q: %w (e.g. timeout=10s)", val, err)
			}
			cfg.Timeout = d
			if d <= 0 {
				return nil, fmt.Errorf("timeout %q: must be positive", val)
			}
		default:
			return nil, fmt.Errorf("unknown parameter %q: a RADOS location takes conf, id and timeout", k)
		}
	}
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// String returns the location in the form Parse takes.
func (l Location) String() string {
	if l.RADOS == nil {
		return l.Dir
	}
	c := l.RADOS
	s := Scheme + "://" + url.PathEscape(c.Pool)
	if c.Namespace != "" {
		s += "/" + url.PathEscape(c.Namespace)
	}
	q := url.Values{}
	if c.ConfFile != "" {
		q.Set("conf", c.ConfFile)
	}
	if c.User != "" {
		q.Set("id", c.User)
	}
	if c.Timeout != 0 && c.Timeout != rados.DefaultTimeout {
		q.Set("timeout", c.Timeout.String())
	}
	if len(q) > 0 {
		s += "?" + q.Encode()
	}
	return s
}

// Open opens the backend at l: the directory (created if missing), or the
// RADOS pool.
func (l Location) Open(ctx context.Context) (storage.Backend, error) {
	if l.RADOS == nil {
		if l.Dir == "" {
			return nil, errors.New("no storage location given: a directory or " + usage)
		}
		return local.Open(l.Dir)
	}
	return openRADOS(ctx, *l.RADOS)
}

// Check parses s and tells whether this build can open it, without opening
// it: a daemon checks its flags before it connects anywhere.
func Check(s string) error {
	l, err := Parse(s)
	if err != nil {
		return err
	}
	if l.RADOS != nil && !RADOSBuilt {
		return fmt.Errorf("storage location %q: %w", s, ErrNoRADOS)
	}
	return nil
}

// Open parses s and opens the backend there.
func Open(ctx context.Context, s string) (storage.Backend, error) {
	l, err := Parse(s)
	if err != nil {
		return nil, err
	}
	return l.Open(ctx)
}
