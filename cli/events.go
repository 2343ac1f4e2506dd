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

// eventWidths are the columns' widths while following, when rows are
// printed as they come and cannot be aligned on the widest: a sequence
// number, an RFC 3339 time, the longest event type and vault name; a
// longer key name shifts only its own row.
var eventWidths = []int{6, 20, 24, 24, 16}

func eventRow(e *ksapi.Event) []string {
	key := e.Data.ObjectName
	if e.Data.ObjectType != "Key" {
		key = "" // a vault event (VaultAccessPolicyChanged) names no key
	}
	return []string{strconv.FormatUint(e.Sequence, 10), e.EventTime.UTC().Format(time.RFC3339), strings.TrimPrefix(e.EventType, "Microsoft.KeyVault."),
		e.Data.VaultName, orDash(key), orDash(e.Data.Version)}
}

// fixedRow lays a row out in eventWidths, two spaces between columns.
func fixedRow(cells []string) string {
	var b strings.Builder
	for i, c := range cells {
		if i < len(eventWidths) {
			fmt.Fprintf(&b, "%-*s  ", eventWidths[i], c)
		} else {
			b.WriteString(c)
		}
	}
	return strings.TrimRight(b.String(), " ")
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
		fmt.Fprintln(c.Stdout, fixedRow(eventHeader))
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
				fmt.Fprintln(c.Stdout, fixedRow(eventRow(&evs[i])))
			}
			cursor = evs[i].Sequence
		}
	}
	return nil
}
