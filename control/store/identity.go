package store

import "time"

// IdentityCredential is the name the credential of user-assigned identity
// name is kept under in Secrets, beside the sets' credentials (kept under
// the set's name). Resource names hold no '/', so the two never meet.
func IdentityCredential(name string) string { return "identity/" + name }

// ManagedIdentity is a user-assigned managed identity: a resource of its
// own, backed by a principal of the key store, that disk encryption sets
// are given to reach their keys as. Its credential is a secret
// (IdentityCredential), never here.
type ManagedIdentity struct {
	Name string `json:"name"`
	ID   string `json:"id"`
	Placement
	// PrincipalID is the key store principal's object id: what access
	// policies grant and the audit log names.
	PrincipalID string `json:"principalId"`
	// ClientID is the identity's application id, as Azure gives one.
	ClientID string `json:"clientId"`
	// TenantID is the tenant the principal was created in; it stays when
	// the subscription moves to another tenant.
	TenantID    string    `json:"tenantId"`
	TimeCreated time.Time `json:"timeCreated"`
}

// Subscription is a subscription that was moved to another tenant.
type Subscription struct {
	ID string `json:"id"`
	// TenantID is the tenant it is in now.
	TenantID string `json:"tenantId"`
	// Transfers lists its moves, the oldest first.
	Transfers []TenantTransfer `json:"transfers"`
}

// TenantTransfer is one move of a subscription to another tenant.
type TenantTransfer struct {
	From string    `json:"from"`
	To   string    `json:"to"`
	Time time.Time `json:"time"`
}
