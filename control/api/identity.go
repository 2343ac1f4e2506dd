package api

import "time"

// UserAssignedIdentityType is the resource type of a user-assigned identity.
const UserAssignedIdentityType = "Microsoft.ManagedIdentity/userAssignedIdentities"

// UserAssignedIdentity is a user-assigned managed identity: a resource of its
// own, backed by a principal of the key store, that disk encryption sets are
// given to use their keys as.
type UserAssignedIdentity struct {
	Name          string `json:"name"`
	ID            string `json:"id"`
	Type          string `json:"type"`
	Location      string `json:"location"`
	Subscription  string `json:"subscription"`
	ResourceGroup string `json:"resourceGroup"`
	// PrincipalID is what access policies grant and the audit log names.
	PrincipalID string    `json:"principalId"`
	ClientID    string    `json:"clientId"`
	TenantID    string    `json:"tenantId"`
	TimeCreated time.Time `json:"timeCreated"`
	// DiskEncryptionSets are the sets it was given, by name.
	DiskEncryptionSets []string `json:"diskEncryptionSets"`
	// Warning says why it cannot be used (its subscription moved to
	// another tenant); empty while it can.
	Warning string `json:"warning,omitempty"`
}

// CreateIdentityRequest is the body of a user-assigned identity's creation.
type CreateIdentityRequest struct {
	Name          string `json:"name"`
	Location      string `json:"location,omitempty"`
	Subscription  string `json:"subscription,omitempty"`
	ResourceGroup string `json:"resourceGroup,omitempty"`
}

// Subscription is a subscription of the host's resources, with the tenant
// it is in.
type Subscription struct {
	ID string `json:"id"`
	// TenantID is the tenant the subscription is in: the key store's own
	// unless it was moved.
	TenantID  string           `json:"tenantId"`
	Transfers []TenantTransfer `json:"transfers"`
	// Resources counts what lives in it, by kind ("disks", "vms", ...).
	Resources map[string]int `json:"resources"`
}

// TenantTransfer is one move of a subscription to another tenant.
type TenantTransfer struct {
	From string    `json:"from"`
	To   string    `json:"to"`
	Time time.Time `json:"time"`
}

// TransferSubscriptionRequest moves a subscription to another tenant.
type TransferSubscriptionRequest struct {
	TenantID string `json:"tenantId"`
}
