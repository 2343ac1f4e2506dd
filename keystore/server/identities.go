package server

import (
	"crypto/hmac"
	"crypto/sha256"
	"regexp"

	"hostcrypt/keystore/api"

	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"

	bolt "go.etcd.io/bbolt"

	"hostcrypt/keystore/auditchain"
)

func (c *call) requireKind(what string, kinds ...string) error {
	for _, k := range kinds {
		if c.p.Kind == k {
			return nil
		}
	}
	return forbiddenByPolicy("caller %s (%s) may not %s", c.p.ObjectID, c.p.Kind, what)
}

// hostGroupRE is what a host group's name may be.
var hostGroupRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func (s *Server) createIdentity(c *call) (any, error) {
	var req api.IdentityCreate
	if err := decode(c, &req); err != nil {
		return nil, err
	}
	if err := c.requireKind("create identities; the platform principal or an administrator can", kindPlatform, kindAdmin); err != nil {
		return nil, err
	}
	typ := kindSystem
	if req.Type != "" {
		var ok bool
		if typ, ok = canonical([]string{kindSystem, kindUserAssigned, kindUser, kindHost}, req.Type); !ok {
			return nil, badParam("identity type %q is not valid; use SystemAssigned, UserAssigned, User or Host", req.Type)
		}
	}
	if req.HostGroup != "" && !hostGroupRE.MatchString(req.HostGroup) {
		return nil, badParam("hostGroup %q is not valid: 1-63 letters, digits, dots, hyphens and underscores, starting with a letter or digit", req.HostGroup)
	}
	switch {
	case typ == kindHost && c.p.Kind != kindAdmin:
		// A host acts for every identity of its group: minting one is
		// the administrator's, never the platform token's, so that the
		// platform token alone still reaches no customer key.
		return nil, forbiddenByPolicy("caller %s (%s) may not create host identities; an administrator can", c.p.ObjectID, c.p.Kind)
	case typ == kindHost && req.HostGroup == "":
		return nil, badParam("a Host identity needs hostGroup: the group of hosts it belongs to")
	case typ == kindUser && req.HostGroup != "":
		return nil, badParam("hostGroup is for Host, SystemAssigned and UserAssigned identities, not User")
	}
	tenant := req.TenantID
	if tenant == "" {
		tenant = c.p.TenantID
	}
	if err := checkID("tenantId", tenant); err != nil {
		return nil, err
	}
	if len(req.DisplayName) > 128 || strings.IndexFunc(req.DisplayName, unicode.IsControl) >= 0 {
		return nil, badParam("displayName is not valid: at most 128 characters, none of them control characters")
	}
	p := principal{ObjectID: newID(), TenantID: tenant, Kind: typ, DisplayName: req.DisplayName, HostGroup: req.HostGroup, Created: s.clock.Now().UTC()}
	// A managed identity made for a host group gets no token: its hosts
	// act for it, and a credential that exists nowhere leaks nowhere.
	var token string
	if typ == kindHost || req.HostGroup == "" {
		token = newToken()
		p.TokenHash = tokenHash(token)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := putJSON(tx, bucketPrincipals, p.ObjectID, p); err != nil {
			return err
		}
		if p.TokenHash == "" {
			return nil
		}
		return tx.Bucket(bucketTokens).Put([]byte(p.TokenHash), []byte(p.ObjectID))
	})
	if err != nil {
		return nil, err
	}
	c.status = http.StatusCreated
	return api.Identity{PrincipalID: p.ObjectID, TenantID: p.TenantID, Type: p.Kind, DisplayName: p.DisplayName, HostGroup: p.HostGroup, Created: p.Created, Token: token}, nil
}

// actFor makes call c, authenticated as a host identity, one of the
// managed identity target: allowed only for a SystemAssigned or
// UserAssigned identity created for the host's group. The host stays on
// the call as its actor, for the audit line.
func (s *Server) actFor(c *call, target string) error {
	host := c.p
	if host.Kind != kindHost {
		return errf(http.StatusForbidden, "Forbidden", "ActForNotAllowed", "caller %s (%s) may not act for another identity; only a host identity may (%s)", host.ObjectID, host.Kind, api.ActForHeader)
	}
	var p principal
	err := s.db.View(func(tx *bolt.Tx) error {
		ok, err := getJSON(tx, bucketPrincipals, target, &p)
		if err == nil && !ok {
			err = errf(http.StatusForbidden, "Forbidden", "ActForNotAllowed", "host %s may not act for identity %s: it does not exist (deleted?)", host.ObjectID, target)
		}
		return err
	})
	if err != nil {
		return err
	}
	if (p.Kind != kindSystem && p.Kind != kindUserAssigned) || p.HostGroup == "" || p.HostGroup != host.HostGroup {
		return errf(http.StatusForbidden, "Forbidden", "ActForNotAllowed", "host %s (group %s) may not act for identity %s: only for a managed identity created for its host group", host.ObjectID, host.HostGroup, target)
	}
	c.actor, c.p = host, &p
	return nil
}

// recordKeyOf derives host group group's record key from the master key.
func (s *Server) recordKeyOf(group string) []byte {
	m := hmac.New(sha256.New, s.master)
	m.Write([]byte("hostcrypt keystore record key v1\x00"))
	m.Write([]byte(group))
	return m.Sum(nil)
}

// recordKey gives a host identity its group's record key: what the
// group's hosts authenticate the records they share with, so that the
// storage that holds the records cannot change them unnoticed.
func (s *Server) recordKey(c *call) (any, error) {
	if c.actor != nil || c.p.Kind != kindHost {
		return nil, forbiddenByPolicy("caller %s (%s) may not read a record key; a host identity can, acting as itself", c.p.ObjectID, c.p.Kind)
	}
	return api.RecordKey{HostGroup: c.p.HostGroup, Key: s.recordKeyOf(c.p.HostGroup)}, nil
}

func (s *Server) getIdentity(c *call) (any, error) {
	id := c.r.PathValue("id")
	if id == "self" {
		id = c.p.ObjectID
	}
	if id != c.p.ObjectID {
		if err := c.requireKind("read other identities", kindPlatform, kindAdmin); err != nil {
			return nil, err
		}
	}
	var p principal
	err := s.db.View(func(tx *bolt.Tx) error {
		ok, err := getJSON(tx, bucketPrincipals, id, &p)
		if err == nil && !ok {
			err = errf(http.StatusNotFound, "IdentityNotFound", "", "identity %s not found", id)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return api.Identity{PrincipalID: p.ObjectID, TenantID: p.TenantID, Type: p.Kind, DisplayName: p.DisplayName, HostGroup: p.HostGroup, Created: p.Created}, nil
}

// deleteIdentity revokes an identity: its token stops working at once.
func (s *Server) deleteIdentity(c *call) (any, error) {
	if err := c.requireKind("delete identities", kindPlatform, kindAdmin); err != nil {
		return nil, err
	}
	id := c.r.PathValue("id")
	err := s.db.Update(func(tx *bolt.Tx) error {
		var p principal
		ok, err := getJSON(tx, bucketPrincipals, id, &p)
		if err != nil {
			return err
		}
		if !ok {
			return errf(http.StatusNotFound, "IdentityNotFound", "", "identity %s not found", id)
		}
		if p.Kind == kindAdmin || p.Kind == kindPlatform {
			return badParam("identity %s is the key store's own %s principal and cannot be deleted", id, p.Kind)
		}
		if p.TokenHash != "" {
			if err := tx.Bucket(bucketTokens).Delete([]byte(p.TokenHash)); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketPrincipals).Delete([]byte(id))
	})
	if err != nil {
		return nil, err
	}
	c.status = http.StatusNoContent
	return nil, nil
}

func queryUint(q url.Values, name string) (uint64, error) {
	v := q.Get(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, badParam("query parameter %s=%q is not a non-negative integer", name, v)
	}
	return n, nil
}

func queryLimit(q url.Values) (int, error) {
	n, err := queryUint(q, "limit")
	if err != nil {
		return 0, err
	}
	if n == 0 || n > 1000 {
		n = 1000
	}
	return int(n), nil
}

// maxExcludeOps bounds excludeOp: there are fewer operations than this.
const maxExcludeOps = 64

func (s *Server) readAudit(c *call) (any, error) {
	if err := c.requireKind("read the audit log; an administrator can", kindAdmin); err != nil {
		return nil, err
	}
	q := c.r.URL.Query()
	after, err := queryUint(q, "after")
	if err != nil {
		return nil, err
	}
	limit, err := queryLimit(q)
	if err != nil {
		return nil, err
	}
	aq := auditQuery{after: after, limit: limit, vault: q.Get("vault"), exclude: map[string]bool{}}
	if q.Get("last") != "" {
		if q.Get("limit") != "" {
			return nil, badParam("give limit (the oldest records after `after`) or last (the newest), not both")
		}
		n, err := queryUint(q, "last")
		if err != nil {
			return nil, err
		}
		if n == 0 || n > 1000 {
			return nil, badParam("last=%d is out of range; use 1 to 1000", n)
		}
		aq.limit, aq.last = int(n), true
	}
	for _, v := range q["excludeOp"] {
		for _, op := range strings.Split(v, ",") {
			if op = strings.TrimSpace(op); op != "" {
				aq.exclude[op] = true
			}
		}
	}
	if len(aq.exclude) > maxExcludeOps {
		return nil, badParam("excludeOp names %d operations; at most %d", len(aq.exclude), maxExcludeOps)
	}
	switch p := q.Get("polling"); p {
	case "", "true":
	case "false":
		aq.hidePolling = true
	default:
		return nil, badParam("polling=%q: use true (show the host's own event polling, the default) or false", p)
	}
	recs, hidden, err := s.audit.Query(aq)
	if err != nil {
		return nil, err
	}
	return api.AuditPage{Value: recs, HiddenPolling: hidden}, nil
}

func (s *Server) auditHead(c *call) (any, error) {
	if err := c.requireKind("read the audit log's head; an administrator can", kindAdmin); err != nil {
		return nil, err
	}
	h := s.audit.Head()
	return api.AuditHead{Seq: h.Seq, Hash: h.Hash.String(), Head: h.String()}, nil
}

func (s *Server) auditVerify(c *call) (any, error) {
	if err := c.requireKind("verify the audit log; an administrator can", kindAdmin); err != nil {
		return nil, err
	}
	var since *auditchain.Head
	if v := c.r.URL.Query().Get("sinceHead"); v != "" {
		h, err := auditchain.ParseHead(v)
		if err != nil {
			return nil, badParam("sinceHead: %v", err)
		}
		since = &h
	}
	r, err := s.audit.Verify(since)
	if err != nil {
		return nil, err
	}
	return verificationJSON(r), nil
}

// verificationJSON is a verifier's report as the API answers it.
func verificationJSON(r *auditchain.Report) api.AuditVerification {
	v := api.AuditVerification{OK: r.OK, Files: r.Files, Lines: r.Lines, FirstSeq: r.FirstSeq, Head: r.Head,
		Unchained: r.Unchained, SinceHead: r.SinceHead}
	if p := r.Problem; p != nil {
		v.Problem = &api.AuditProblem{Kind: p.Kind, File: p.File, Line: p.Line, Seq: p.Seq, Message: p.Message}
	}
	return v
}

func (s *Server) readEventsAPI(c *call) (any, error) {
	if err := c.requireKind("read key events; an administrator or the platform can", kindAdmin, kindPlatform); err != nil {
		return nil, err
	}
	q := c.r.URL.Query()
	after, err := queryUint(q, "after")
	if err != nil {
		return nil, err
	}
	limit, err := queryLimit(q)
	if err != nil {
		return nil, err
	}
	var wait time.Duration
	if w := q.Get("wait"); w != "" {
		if wait, err = time.ParseDuration(w); err != nil || wait < 0 {
			return nil, badParam("wait=%q is not a duration such as 30s", w)
		}
		wait = min(wait, time.Minute)
	}
	vaultName := q.Get("vault")
	tenantVaults := map[string]bool{}
	if c.p.Kind == kindAdmin {
		s.db.View(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketVaults).ForEach(func(k, _ []byte) error {
				if v, err := loadVault(tx, string(k)); err == nil && v.TenantID == c.p.TenantID {
					tenantVaults[v.Name] = true
				}
				return nil
			})
		})
	}
	match := func(_ *bolt.Tx, ev *api.Event) bool {
		if vaultName != "" && ev.Data.VaultName != vaultName {
			return false
		}
		return c.p.Kind == kindPlatform || tenantVaults[ev.Data.VaultName]
	}
	evs, err := s.waitEvents(c.r.Context(), after, limit, wait, match)
	if err != nil {
		return nil, err
	}
	return api.List[api.Event]{Value: evs}, nil
}

func (s *Server) createWebhook(c *call) (any, error) {
	var req api.WebhookCreate
	if err := decode(c, &req); err != nil {
		return nil, err
	}
	if err := c.requireKind("register webhooks; an administrator can", kindAdmin); err != nil {
		return nil, err
	}
	if _, err := s.webhookEntry(req.URL); err != nil {
		return nil, err
	}
	w := webhook{ID: newID(), URL: req.URL, Vault: req.Vault, Tenant: c.p.TenantID}
	err := s.db.Update(func(tx *bolt.Tx) error {
		if w.Vault != "" {
			// Only a vault of the caller's tenant; another tenant's is
			// not found, as it is to GET /events.
			if err := checkVaultName(w.Vault); err != nil {
				return err
			}
			if v, err := loadVault(tx, w.Vault); err != nil || v.TenantID != w.Tenant {
				return vaultNotFound(w.Vault)
			}
		}
		// Deliver events from now on, not the whole history.
		if k, _ := tx.Bucket(bucketEvents).Cursor().Last(); k != nil {
			w.Cursor = bigEndian(k)
		}
		return putJSON(tx, bucketWebhooks, w.ID, w)
	})
	if err != nil {
		return nil, err
	}
	s.startWebhook(w)
	c.status = http.StatusCreated
	return w.json(), nil
}

func (s *Server) listWebhooks(c *call) (any, error) {
	if err := c.requireKind("list webhooks", kindAdmin); err != nil {
		return nil, err
	}
	out := []api.Webhook{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketWebhooks).ForEach(func(_, raw []byte) error {
			var w webhook
			if err := jsonUnmarshal(raw, &w); err != nil {
				return err
			}
			if w.Tenant == c.p.TenantID {
				out = append(out, w.json())
			}
			return nil
		})
	})
	return api.List[api.Webhook]{Value: out}, err
}

func (s *Server) deleteWebhook(c *call) (any, error) {
	if err := c.requireKind("delete webhooks", kindAdmin); err != nil {
		return nil, err
	}
	id := c.r.PathValue("id")
	err := s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketWebhooks).Get([]byte(id)) == nil {
			return errf(http.StatusNotFound, "WebhookNotFound", "", "webhook %s not found", id)
		}
		return tx.Bucket(bucketWebhooks).Delete([]byte(id))
	})
	if err != nil {
		return nil, err
	}
	s.stopWebhook(id)
	c.status = http.StatusNoContent
	return nil, nil
}
