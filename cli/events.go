package cli

import (
	"encoding/json"
	"fmt"
	ksapi "hostcrypt/keystore/api"
	"strconv"
	"strings"
	"time"
)

func eventsCommands() []Command {
	return []Command{{"events", "", "follow the key event stream", eventsRun}}
}

var eventHeader = []string{"SEQ", "TIME", "TYPE", "VAULT", "KEY", "VERSION"}

func eventRow(e *ksapi.Event) []string {
	return []string{strconv.FormatUint(e.Sequence, 10), e.EventTime.Format(time.RFC3339), strings.TrimPrefix(e.EventType, "Microsoft.KeyVault."), e.Data.VaultName, e.Data.ObjectName, orDash(e.Data.Version)}
}

// eventsRun prints events after --after; with --follow (the default) it
// keeps long-polling and prints each new event as it arrives, one JSON
// object per line with -o json.
func eventsRun(c *Context, args []string) error {
	f := newFlags(c)
	after := f.Uint64("after", 0, "only events after this sequence number")
	vault := f.String("vault-name", "", "only this vault's events")
	follow := f.boolValue("follow", "keep waiting for new events (default true)")
	wait := f.Duration("wait", 30*time.Second, "long-poll wait per request")
	if err := f.parse(args); err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	if follow.set && !follow.val {
		evs, err := ks.EventsOf(c.Ctx, *after, 0, *vault)
		if err != nil {
			return err
		}
		return showList(c, evs, eventHeader, eventRow)
	}
	if c.Output == "table" {
		fmt.Fprintln(c.Stdout, strings.Join(eventHeader, "\t"))
	}
	cursor := *after
	for c.Ctx.Err() == nil {
		evs, err := ks.EventsOf(c.Ctx, cursor, *wait, *vault)
		if err != nil {
			if c.Ctx.Err() != nil {
				return nil
			}
			return err
		}
		for i := range evs {
			if c.Output == "json" {
				b, _ := json.Marshal(evs[i])
				fmt.Fprintln(c.Stdout, string(b))
			} else {
				fmt.Fprintln(c.Stdout, strings.Join(eventRow(&evs[i]), "\t"))
			}
			cursor = evs[i].Sequence
		}
	}
	return nil
}
