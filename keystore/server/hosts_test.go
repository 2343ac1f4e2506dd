package server

import (
	"crypto/rand"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/keystore/api"
	"hostcrypt/keystore/client"
)

// hostIdentity creates, as the administrator, a host identity of group
// and returns a client authenticated as it.
func (e *env) hostIdentity(name, group string) (*api.Identity, *client.Client) {
	id, err := e.admin.CreateIdentityWith(bg, api.IdentityCreate{Type: api.IdentityHost, DisplayName: name, HostGroup: group})
	require.NoError(e.t, err)
	require.NotEmpty(e.t, id.Token)
	return id, e.clientWithToken(id.Token)
}

// Host identities act for the managed identities of their group, and for
// no other: a set's identity made for group g1 has no token, host h1 of g1
// wraps and unwraps as it (the audit names both), a host of g2, a bare
// principal and the platform cannot, and only an administrator makes
// hosts.
func TestHostActsForItsGroupsIdentities(t *testing.T) {
	e := startEnv(t)
	e.vault("cmkvault", "premium")
	kb, err := e.admin.CreateKey(bg, "cmkvault", "cmk", api.KeyCreate{Kty: "RSA", KeySize: ptr(2048)})
	require.NoError(t, err)

	_, err = e.platform.CreateIdentityWith(bg, api.IdentityCreate{Type: api.IdentityHost, HostGroup: "g1"})
	requireCode(t, err, 403, "ForbiddenByPolicy")
	_, err = e.admin.CreateIdentityWith(bg, api.IdentityCreate{Type: api.IdentityHost})
	requireCode(t, err, 400, "")
	_, err = e.admin.CreateIdentityWith(bg, api.IdentityCreate{Type: api.IdentityHost, HostGroup: "no/slash"})
	requireCode(t, err, 400, "")

	des, err := e.platform.CreateIdentityWith(bg, api.IdentityCreate{Type: api.IdentitySystemAssigned, DisplayName: "des/d1", HostGroup: "g1"})
	require.NoError(t, err)
	assert.Empty(t, des.Token, "an identity its hosts act for has no token")
	assert.Equal(t, "g1", des.HostGroup)
	_, err = e.admin.SetPolicy(bg, "cmkvault", des.PrincipalID, []string{"get", "wrapKey", "unwrapKey"})
	require.NoError(t, err)
	plain, plainC := e.identity("SystemAssigned", "")
	_, err = e.admin.SetPolicy(bg, "cmkvault", plain.PrincipalID, []string{"get", "wrapKey", "unwrapKey"})
	require.NoError(t, err)

	h1, h1c := e.hostIdentity("host/a", "g1")
	_, h1bc := e.hostIdentity("host/b", "g1")
	_, h2c := e.hostIdentity("host/x", "g2")
	self, err := h1c.GetIdentity(bg, "self")
	require.NoError(t, err)
	assert.Equal(t, h1.PrincipalID, self.PrincipalID)
	assert.Equal(t, "g1", self.HostGroup)
	assert.Equal(t, api.IdentityHost, self.Type)

	dek := make([]byte, 32)
	rand.Read(dek)
	kid, wrapped, err := h1c.ActingFor(des.PrincipalID).WrapKey(bg, kb.Key.Kid, api.RSAOAEP256, dek)
	require.NoError(t, err)
	// Another host of the group unwraps what the first wrapped.
	_, got, err := h1bc.ActingFor(des.PrincipalID).UnwrapKey(bg, kid, api.RSAOAEP256, wrapped)
	require.NoError(t, err)
	assert.Equal(t, dek, got)

	// Refused: a host of another group, an identity made without a group,
	// a host as itself, a non-host acting, the platform acting.
	_, _, err = h2c.ActingFor(des.PrincipalID).UnwrapKey(bg, kid, api.RSAOAEP256, wrapped)
	requireCode(t, err, 403, "ActForNotAllowed")
	assert.Contains(t, err.Error(), "g2")
	_, _, err = h1c.ActingFor(plain.PrincipalID).UnwrapKey(bg, kid, api.RSAOAEP256, wrapped)
	requireCode(t, err, 403, "ActForNotAllowed")
	_, _, err = h1c.UnwrapKey(bg, kid, api.RSAOAEP256, wrapped)
	requireCode(t, err, 403, "")
	_, _, err = plainC.ActingFor(des.PrincipalID).UnwrapKey(bg, kid, api.RSAOAEP256, wrapped)
	requireCode(t, err, 403, "ActForNotAllowed")
	_, _, err = e.platform.ActingFor(des.PrincipalID).UnwrapKey(bg, kid, api.RSAOAEP256, wrapped)
	requireCode(t, err, 403, "ActForNotAllowed")
	_, _, err = h1c.ActingFor(h1.PrincipalID).UnwrapKey(bg, kid, api.RSAOAEP256, wrapped)
	requireCode(t, err, 403, "ActForNotAllowed")

	// The audit names the set's identity as the caller and the host as
	// the actor.
	recs, err := e.admin.Audit(bg, 0, "cmkvault", 0)
	require.NoError(t, err)
	var wrap, refused *api.AuditRecord
	for i := range recs {
		r := &recs[i]
		if r.OperationName == "KeyWrap" && r.ResultCode == 200 {
			wrap = r
		}
		if r.OperationName == "KeyUnwrap" && r.ErrorCode == "ActForNotAllowed" && refused == nil {
			refused = r
		}
	}
	require.NotNil(t, wrap)
	assert.Equal(t, des.PrincipalID, wrap.CallerObjectID)
	assert.Equal(t, api.IdentitySystemAssigned, wrap.CallerType)
	assert.Equal(t, h1.PrincipalID, wrap.ActorObjectID)
	assert.Equal(t, api.IdentityHost, wrap.ActorType)
	assert.Equal(t, "host/a", wrap.ActorName)
	require.NotNil(t, refused, "a refused act-for is audited")
	assert.Equal(t, api.IdentityHost, refused.CallerType, "the refused host is the caller")

	// A host deleted stops acting at once.
	require.NoError(t, e.admin.DeleteIdentity(bg, h1.PrincipalID))
	_, _, err = h1c.ActingFor(des.PrincipalID).UnwrapKey(bg, kid, api.RSAOAEP256, wrapped)
	requireCode(t, err, 401, "")
	// And a set's identity without a token deletes cleanly.
	require.NoError(t, e.platform.DeleteIdentity(bg, des.PrincipalID))
	_, _, err = h1bc.ActingFor(des.PrincipalID).UnwrapKey(bg, kid, api.RSAOAEP256, wrapped)
	requireCode(t, err, 403, "ActForNotAllowed")
}

// The record key: the same for every host of a group, another for another
// group, for host identities acting as themselves only.
func TestRecordKeyPerHostGroup(t *testing.T) {
	e := startEnv(t)
	_, a := e.hostIdentity("host/a", "g1")
	_, b := e.hostIdentity("host/b", "g1")
	_, x := e.hostIdentity("host/x", "g2")
	ka, err := a.RecordKey(bg)
	require.NoError(t, err)
	kb, err := b.RecordKey(bg)
	require.NoError(t, err)
	kx, err := x.RecordKey(bg)
	require.NoError(t, err)
	assert.Len(t, ka.Key, 32)
	assert.Equal(t, "g1", ka.HostGroup)
	assert.Equal(t, ka.Key, kb.Key)
	assert.NotEqual(t, ka.Key, kx.Key)

	_, err = e.platform.RecordKey(bg)
	requireCode(t, err, 403, "")
	_, err = e.admin.RecordKey(bg)
	requireCode(t, err, 403, "")
	des, err := e.platform.CreateIdentityWith(bg, api.IdentityCreate{Type: api.IdentitySystemAssigned, HostGroup: "g1"})
	require.NoError(t, err)
	_, err = a.ActingFor(des.PrincipalID).RecordKey(bg)
	requireCode(t, err, 403, "")

	// It survives a restart: it is derived, not stored.
	dir, clock := e.dir, e.clock
	e.stop()
	e2 := startEnvIn(t, dir, clock)
	a2, err := e2.admin.CreateIdentityWith(bg, api.IdentityCreate{Type: api.IdentityHost, HostGroup: "g1"})
	require.NoError(t, err)
	k2, err := e2.clientWithToken(a2.Token).RecordKey(bg)
	require.NoError(t, err)
	assert.Equal(t, ka.Key, k2.Key)
}
