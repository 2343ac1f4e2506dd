package cli

import (
	"fmt"
	"sort"
	"strings"

	"hostcrypt/control/api"
)

func subscriptionCommands() []Command {
	return []Command{
		{"subscription", "show", "show a subscription's tenant, its transfers and what it holds", subscriptionShow},
		{"subscription", "list", "list the subscriptions that hold resources or were transferred", subscriptionList},
		{"subscription", "transfer", "move a subscription to another tenant (its managed identities stay behind)", subscriptionTransfer},
	}
}

var subscriptionHeader = []string{"SUBSCRIPTION", "TENANT", "TRANSFERS", "RESOURCES"}

func subscriptionRow(s *api.Subscription) []string {
	kinds := make([]string, 0, len(s.Resources))
	for k, n := range s.Resources {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
	}
	sort.Strings(kinds)
	return []string{s.ID, s.TenantID, fmt.Sprint(len(s.Transfers)), orDash(strings.Join(kinds, ","))}
}

func subscriptionShow(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "subscription id")
	if err := f.parse(args); err != nil {
		return err
	}
	s, err := onHost(c, func(h *api.Client) (*api.Subscription, error) { return h.ShowSubscription(c.Ctx, *name) })
	if err != nil {
		return err
	}
	return c.show(s, subscriptionHeader, [][]string{subscriptionRow(s)})
}

func subscriptionList(c *Context, args []string) error {
	if err := newFlags(c).parse(args); err != nil {
		return err
	}
	ss, err := onHost(c, func(h *api.Client) ([]api.Subscription, error) { return h.ListSubscriptions(c.Ctx) })
	if err != nil {
		return err
	}
	return showList(c, ss, subscriptionHeader, subscriptionRow)
}

func subscriptionTransfer(c *Context, args []string) error {
	f := newFlags(c)
	name := f.requiredString("name", "subscription id")
	tenant := f.requiredString("tenant", "tenant id to move it to")
	if err := f.parse(args); err != nil {
		return err
	}
	s, err := onHost(c, func(h *api.Client) (*api.Subscription, error) {
		return h.TransferSubscription(c.Ctx, *name, api.TransferSubscriptionRequest{TenantID: *tenant})
	})
	if err != nil {
		return err
	}
	if c.Output == "table" {
		c.warnf("the managed identities of subscription %s stay in their tenant: disk encryption sets of the subscription cannot use their keys until given an identity of tenant %s (hostcrypt identity create --name NAME --subscription %s, grant it on the vault, hostcrypt des update --name DES --mi-user-assigned NAME)",
			s.ID, s.TenantID, s.ID)
	}
	return c.show(s, subscriptionHeader, [][]string{subscriptionRow(s)})
}
