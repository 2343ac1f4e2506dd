package cli

import (
	"hostcrypt/control/api"
)

// placement holds the --subscription, --resource-group and --location
// flags of a create verb; empty values take the daemon's defaults.
type placement struct {
	subscription, resourceGroup, location *string
}

func placementFlags(f *flags) placement {
	return placement{
		subscription:  f.String("subscription", "", "subscription id (default "+api.DefaultSubscription+")"),
		resourceGroup: f.String("resource-group", "", "resource group (default "+api.DefaultResourceGroup+")"),
		location:      f.String("location", "", "location (default: the host's)"),
	}
}

func diskMove(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "disk name")
	rg := f.requiredString("resource-group", "resource group to move the disk to")
	sub := f.String("subscription", "", "subscription to move the disk to (default: its own)")
	if err := f.parse(args); err != nil {
		return err
	}
	d, err := onHost(c, func(h *api.Client) (*api.Disk, error) {
		return h.MoveDisk(c.Ctx, *name, api.MoveRequest{ResourceGroup: *rg, Subscription: *sub})
	})
	if err != nil {
		return err
	}
	return c.showDisk(d)
}
