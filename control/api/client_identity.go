package api

import "context"

// ListIdentities lists every user-assigned identity, sorted by name.
func (c *Client) ListIdentities(ctx context.Context) ([]UserAssignedIdentity, error) {
	return many[UserAssignedIdentity](c, ctx, RouteListIdentities)
}

// CreateIdentity creates a user-assigned identity.
func (c *Client) CreateIdentity(ctx context.Context, r CreateIdentityRequest) (*UserAssignedIdentity, error) {
	return one[UserAssignedIdentity](c, ctx, RouteCreateIdentity, r)
}

// ShowIdentity returns one user-assigned identity.
func (c *Client) ShowIdentity(ctx context.Context, name string) (*UserAssignedIdentity, error) {
	return one[UserAssignedIdentity](c, ctx, RouteShowIdentity, nil, name)
}

// DeleteIdentity deletes a user-assigned identity no set uses.
func (c *Client) DeleteIdentity(ctx context.Context, name string) error {
	return c.Call(ctx, RouteDeleteIdentity, nil, nil, name)
}

// ListSubscriptions lists the subscriptions that hold resources or were
// moved to another tenant.
func (c *Client) ListSubscriptions(ctx context.Context) ([]Subscription, error) {
	return many[Subscription](c, ctx, RouteListSubscriptions)
}

// ShowSubscription returns one subscription with its tenant.
func (c *Client) ShowSubscription(ctx context.Context, id string) (*Subscription, error) {
	return one[Subscription](c, ctx, RouteShowSubscription, nil, id)
}

// TransferSubscription moves a subscription to another tenant.
func (c *Client) TransferSubscription(ctx context.Context, id string, r TransferSubscriptionRequest) (*Subscription, error) {
	return one[Subscription](c, ctx, RouteTransferSubscription, r, id)
}
