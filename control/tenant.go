package control

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"hostcrypt/control/api"
	"hostcrypt/control/store"
)

// Subscriptions and their tenants. Every subscription is in the key store's
// own tenant until it is transferred to another (TransferSubscription). A
// transfer moves the subscription's resources along but not the managed
// identities they use: those stay in the tenant they were created in, and
// a set whose key access goes through an identity of another tenant than
// its subscription's cannot use its key (checkTenant). Platform keys are
// the platform's and keep working.

// subscriptionTenant is the tenant subscription sub is in now.
func (h *Host) subscriptionTenant(ctx context.Context, r *store.Records, sub string) (string, error) {
	if s := r.Subscriptions[sub]; s != nil {
		return s.TenantID, nil
	}
	t, err := h.keys.Tenant(ctx)
	if err != nil {
		return "", fmt.Errorf("asking the key store for its tenant: %w", classified(h.keys, err))
	}
	return t, nil
}

// checkTenant refuses key access for des as ki when the set's subscription
// was moved to another tenant than ki's, saying what happened and how to
// give the set an identity of the new tenant.
func (h *Host) checkTenant(ctx context.Context, des *store.DES, ki keyIdentity) error {
	r, err := h.load(ctx)
	if err != nil {
		return err
	}
	s := r.Subscriptions[des.Subscription]
	if s == nil || s.TenantID == ki.tenant || len(s.Transfers) == 0 {
		return nil
	}
	last := s.Transfers[len(s.Transfers)-1]
	what := "system-assigned identity " + ki.principal
	if ki.ua != "" {
		what = fmt.Sprintf("user-assigned identity %q (%s)", ki.ua, ki.principal)
	}
	return conflict("disk encryption set %q cannot use its key: its subscription %s was transferred to tenant %s on %s, and its %s stayed in tenant %s, as managed identities do; create an identity in the new tenant (hostcrypt identity create --name NAME --subscription %s), let vault %s take principals of tenant %s and grant the identity (hostcrypt keyvault update --name %s --allowed-tenants %s, listing too any other tenant it allows already; hostcrypt keyvault set-policy --name %s --object-id PRINCIPAL --key-permissions get,wrapKey,unwrapKey), then give it to the set (hostcrypt des update --name %s --mi-user-assigned NAME)",
		des.Name, des.Subscription, s.TenantID, last.Time.Format("2006-01-02 15:04:05Z07:00"), what, ki.tenant,
		des.Subscription, des.ActiveKey.SourceVault.ID, s.TenantID, des.ActiveKey.SourceVault.ID, s.TenantID, des.ActiveKey.SourceVault.ID, des.Name)
}

// isGUID says whether s is a lower-case GUID.
func isGUID(s string) bool {
	return checkSubscription(s) == nil
}

// TransferSubscription moves subscription id to tenant req.TenantID. Its
// resources stay where they are and keep their ids; the managed identities
// stay in their tenant, so customer-key VMs of the subscription stop at the
// next key check and keep refusing to start until their sets are given an
// identity of the new tenant. The key monitor is not woken: like the
// origin, the break shows at the next check.
func (h *Host) TransferSubscription(ctx context.Context, id string, req api.TransferSubscriptionRequest) (*api.Subscription, error) {
	id = strings.ToLower(id)
	if err := checkSubscription(id); err != nil {
		return nil, err
	}
	to := strings.ToLower(req.TenantID)
	if !isGUID(to) {
		return nil, badRequest("tenant %q: give a tenant id in GUID form (--tenant)", req.TenantID)
	}
	release, err := h.claim("being transferred to another tenant", "subscription/"+id)
	if err != nil {
		return nil, err
	}
	defer release()
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	from, err := h.subscriptionTenant(ctx, r, id)
	if err != nil {
		return nil, err
	}
	if from == to {
		return nil, conflict("subscription %s is already in tenant %s", id, to)
	}
	now := h.cfg.Now().UTC()
	r, err = h.update(ctx, func(r *store.Records) error {
		s := r.Subscriptions[id]
		if s == nil {
			s = &store.Subscription{ID: id, Transfers: []store.TenantTransfer{}}
			r.Subscriptions[id] = s
		} else if s.TenantID != from {
			return conflict("subscription %s moved to tenant %s meanwhile; look again (hostcrypt subscription show --name %s)", id, s.TenantID, id)
		}
		s.TenantID = to
		s.Transfers = append(s.Transfers, store.TenantTransfer{From: from, To: to, Time: now})
		return nil
	})
	if err != nil {
		return nil, err
	}
	h.log.Warn("subscription transferred to another tenant; its managed identities stay behind", "subscription", id, "from", from, "to", to)
	return h.subscriptionView(ctx, r, id)
}

// subscriptionsOf lists the subscriptions that hold a resource or were
// transferred, with what each holds, by kind.
func subscriptionsOf(r *store.Records) map[string]map[string]int {
	out := map[string]map[string]int{}
	count := func(sub, kind string) {
		if out[sub] == nil {
			out[sub] = map[string]int{}
		}
		out[sub][kind]++
	}
	for _, d := range r.Disks {
		count(d.Subscription, "disks")
	}
	for _, v := range r.VMs {
		count(v.Subscription, "vms")
	}
	for _, d := range r.DES {
		count(d.Subscription, "diskEncryptionSets")
	}
	for _, s := range r.Snapshots {
		count(s.Subscription, "snapshots")
	}
	for _, im := range r.Images {
		count(im.Subscription, "images")
	}
	for _, g := range r.Galleries {
		count(g.Subscription, "galleries")
	}
	for _, mi := range r.Identities {
		count(mi.Subscription, "userAssignedIdentities")
	}
	for id := range r.Subscriptions {
		if out[id] == nil {
			out[id] = map[string]int{}
		}
	}
	return out
}

func (h *Host) subscriptionView(ctx context.Context, r *store.Records, id string) (*api.Subscription, error) {
	res := subscriptionsOf(r)[id]
	if res == nil {
		res = map[string]int{}
	}
	tenant, err := h.subscriptionTenant(ctx, r, id)
	if err != nil {
		return nil, err
	}
	v := &api.Subscription{ID: id, TenantID: tenant, Transfers: []api.TenantTransfer{}, Resources: res}
	if s := r.Subscriptions[id]; s != nil {
		for _, t := range s.Transfers {
			v.Transfers = append(v.Transfers, api.TenantTransfer{From: t.From, To: t.To, Time: t.Time})
		}
	}
	return v, nil
}

// ShowSubscription returns a subscription with its tenant, its transfers
// and what it holds.
func (h *Host) ShowSubscription(ctx context.Context, id string) (*api.Subscription, error) {
	id = strings.ToLower(id)
	if err := checkSubscription(id); err != nil {
		return nil, err
	}
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	return h.subscriptionView(ctx, r, id)
}

// ListSubscriptions returns the subscriptions that hold a resource or were
// transferred, sorted by id.
func (h *Host) ListSubscriptions(ctx context.Context) ([]*api.Subscription, error) {
	r, err := h.load(ctx)
	if err != nil {
		return nil, err
	}
	subs := subscriptionsOf(r)
	ids := make([]string, 0, len(subs))
	for id := range subs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([]*api.Subscription, 0, len(ids))
	for _, id := range ids {
		v, err := h.subscriptionView(ctx, r, id)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}
