package control

import (
	"context"
	"net/http"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"hostcrypt/control/api"
	"hostcrypt/control/keys/keystest"
	"hostcrypt/control/store"
)

// A set given a user-assigned identity uses its key as that identity only:
// the grant of the set's own identity is not enough, the user-assigned
// one's is; the identity cannot be deleted while the set uses it, and a set
// keeps at least one identity.
func TestUserAssignedIdentityKeyAccess(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	k := kid("vault1", "k1")
	id, err := f.h.CreateIdentity(ctx, api.CreateIdentityRequest{Name: "id1"})
	require.NoError(t, err)
	assert.Equal(t, "p-identity/id1", id.PrincipalID)
	assert.Equal(t, keystest.Tenant, id.TenantID)
	assert.Len(t, id.ClientID, 36)
	_, err = f.h.CreateIdentity(ctx, api.CreateIdentityRequest{Name: "id1"})
	requireCode(t, err, http.StatusConflict)
	_, err = f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des0", KeyURL: k, SystemAssignedIdentity: ptr(false)})
	requireCode(t, err, http.StatusBadRequest)
	_, err = f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des0", KeyURL: k, UserAssignedIdentity: "nope"})
	requireCode(t, err, http.StatusBadRequest)
	assert.Empty(t, f.records(t).DES, "refusals create nothing")

	des, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des1", KeyURL: k, UserAssignedIdentity: "id1"})
	require.NoError(t, err)
	assert.Equal(t, api.IdentityBoth, des.Identity.Type)
	assert.Equal(t, "UserAssigned", des.KeyAccessIdentity.Type)
	f.keys.Grant("p-des/des1", true)
	_, err = f.h.CreateDisk(ctx, api.CreateDiskRequest{Name: "c1", SizeBytes: 8 << 20, DiskEncryptionSet: "des1"})
	require.ErrorContains(t, err, "p-identity/id1", "the system-assigned grant does not count")
	f.keys.Grant("p-identity/id1", true)
	f.mustDisk(t, api.CreateDiskRequest{Name: "c1", SizeBytes: 8 << 20, DiskEncryptionSet: "des1"})

	err = f.h.DeleteIdentity(ctx, "id1")
	requireCode(t, err, http.StatusConflict)
	assert.ErrorContains(t, err, "des1")
	_, err = f.h.UpdateDES(ctx, "des1", api.UpdateDESRequest{UserAssignedIdentity: ptr(""), SystemAssignedIdentity: ptr(false)})
	requireCode(t, err, http.StatusBadRequest)

	// Without a system-assigned identity, its principal is gone from the
	// key store; the set goes on as id1.
	des, err = f.h.UpdateDES(ctx, "des1", api.UpdateDESRequest{SystemAssignedIdentity: ptr(false)})
	require.NoError(t, err)
	assert.Equal(t, api.IdentityUserAssigned, des.Identity.Type)
	assert.Empty(t, des.Identity.PrincipalID)
	assert.NotContains(t, f.keys.Identities(), "p-des/des1")
	assert.Equal(t, "ok", des.KeyAccess)

	// Back to the system-assigned one: a new principal, which needs a grant.
	des, err = f.h.UpdateDES(ctx, "des1", api.UpdateDESRequest{UserAssignedIdentity: ptr(""), SystemAssignedIdentity: ptr(true)})
	require.NoError(t, err)
	assert.Equal(t, api.IdentitySystemAssigned, des.KeyAccessIdentity.Type)
	assert.NotEqual(t, "ok", des.KeyAccess)
	require.NoError(t, f.h.DeleteIdentity(ctx, "id1"))
	assert.NotContains(t, f.keys.Identities(), "p-identity/id1")
	cred, err := f.h.secrets.Credential(ctx, store.IdentityCredential("id1"))
	require.NoError(t, err)
	assert.Empty(t, cred, "its credential is forgotten")
}

// A subscription transferred to another tenant: the set's identity of the
// old tenant is refused before the key store is asked, naming the
// transfer; a new identity is made in the new tenant and, given to the
// set, works.
func TestSubscriptionTransferLeavesIdentitiesBehind(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	const t2 = "22222222-3333-4444-5555-666666666666"
	_, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des1", KeyURL: kid("vault1", "k1")})
	require.NoError(t, err)
	f.keys.Grant("p-des/des1", true)
	f.mustDisk(t, api.CreateDiskRequest{Name: "c1", SizeBytes: 8 << 20, DiskEncryptionSet: "des1"})

	_, err = f.h.TransferSubscription(ctx, api.DefaultSubscription, api.TransferSubscriptionRequest{TenantID: "nope"})
	requireCode(t, err, http.StatusBadRequest)
	_, err = f.h.TransferSubscription(ctx, api.DefaultSubscription, api.TransferSubscriptionRequest{TenantID: keystest.Tenant})
	require.Error(t, err, "already there")
	s, err := f.h.TransferSubscription(ctx, api.DefaultSubscription, api.TransferSubscriptionRequest{TenantID: t2})
	require.NoError(t, err)
	assert.Equal(t, t2, s.TenantID)
	assert.Equal(t, 1, s.Resources["disks"])

	r := f.records(t)
	_, err = f.h.customerKeys(ctx, r.DES["des1"])
	requireCode(t, err, http.StatusConflict)
	assert.ErrorContains(t, err, "transferred to tenant "+t2)

	// An identity of another tenant than the set's is refused at once.
	const other = "11111111-2222-3333-4444-555555555555"
	_, err = f.h.CreateIdentity(ctx, api.CreateIdentityRequest{Name: "elsewhere", Subscription: other})
	require.NoError(t, err)
	_, err = f.h.UpdateDES(ctx, "des1", api.UpdateDESRequest{UserAssignedIdentity: ptr("elsewhere")})
	requireCode(t, err, http.StatusBadRequest)
	assert.ErrorContains(t, err, "identities of its own tenant")
	_, err = f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des3", KeyURL: kid("vault1", "k1"), UserAssignedIdentity: "elsewhere"})
	requireCode(t, err, http.StatusBadRequest)

	id, err := f.h.CreateIdentity(ctx, api.CreateIdentityRequest{Name: "id2"})
	require.NoError(t, err)
	assert.Equal(t, t2, id.TenantID)
	f.keys.Grant(id.PrincipalID, true)
	des, err := f.h.UpdateDES(ctx, "des1", api.UpdateDESRequest{UserAssignedIdentity: ptr("id2")})
	require.NoError(t, err)
	assert.Equal(t, "ok", des.KeyAccess)
	// A set created now gets its system-assigned identity in the new tenant.
	des, err = f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des2", KeyURL: kid("vault1", "k1")})
	require.NoError(t, err)
	assert.Equal(t, t2, des.Identity.TenantID)
}

// The Ultra and PremiumV2 rule at des update names the disks.
func TestUltraDiskKeepsSetOffUserAssigned(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	_, err := f.h.CreateIdentity(ctx, api.CreateIdentityRequest{Name: "id1"})
	require.NoError(t, err)
	_, err = f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des1", KeyURL: kid("vault1", "k1")})
	require.NoError(t, err)
	f.keys.Grant("p-des/des1", true)
	f.mustDisk(t, api.CreateDiskRequest{Name: "u1", SizeBytes: 8 << 20, Sku: "PremiumV2_LRS", DiskEncryptionSet: "des1"})
	_, err = f.h.UpdateDES(ctx, "des1", api.UpdateDESRequest{UserAssignedIdentity: ptr("id1")})
	requireCode(t, err, http.StatusBadRequest)
	assert.ErrorContains(t, err, "u1")
	assert.Nil(t, f.records(t).DES["des1"].Identity.UserAssigned)
}

// heldLoad makes the n-th Load of the store wait until released, so a test
// can see what is claimed meanwhile.
type heldLoad struct {
	store.Store
	mu       sync.Mutex
	n        int
	entered  chan struct{}
	released chan struct{}
}

func (s *heldLoad) Load(ctx context.Context) (*store.Records, store.Version, error) {
	s.mu.Lock()
	s.n--
	hold := s.n == 0
	s.mu.Unlock()
	if hold {
		close(s.entered)
		<-s.released
	}
	return s.Store.Load(ctx)
}

// A rotation round leaves a set alone that has nothing to rotate (no
// auto-rotation, no re-wrap left), so that a des update of it, such as a
// change of its identity right after a grant woke the round, is not turned
// away as busy.
func TestRotationRoundLeavesIdleSetsUnclaimed(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	_, err := f.h.CreateDES(ctx, api.CreateDESRequest{Name: "des1", KeyURL: kid("vault1", "k1")})
	require.NoError(t, err)
	hl := &heldLoad{Store: f.h.store, n: 2, entered: make(chan struct{}), released: make(chan struct{})}
	f.h.store = hl
	defer close(hl.released)
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.h.RotateKeys(ctx)
	}()
	select {
	case <-done:
	case <-hl.entered: // a load inside the round: what does it hold?
	}
	release, err := f.h.claim("test", "des/des1")
	require.NoError(t, err, "the round claimed an idle set")
	release()
}
