package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	ksapi "hostcrypt/keystore/api"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"

	"hostcrypt/keystore/auditchain"
	"hostcrypt/keystore/client"
)

// keyvaultAudit reads the key store's audit log, prints the head of its
// hash chain, or verifies the chain (through the key store, or offline on
// a copy of its directory).
func keyvaultAudit(c *Context, args []string) error {
	f := newFlags(c)
	name := f.String("name", "", "only this vault's records")
	after := f.Uint64("after", 0, "only records after this sequence number")
	limit := f.Int("limit", 1000, "at most this many records, the oldest first")
	last := f.Int("last", 0, "the newest N records instead (1 to 1000)")
	exclude := f.String("exclude-op", "", "leave out these operations, comma-separated (e.g. KeyList,VaultGet)")
	polling := switchValue(f, "polling", "show the host's own event polling (successful EventsRead by the platform), hidden by default")
	head := switchValue(f, "head", "print the head of the audit log's hash chain (SEQ:HASH); save it elsewhere for --since-head")
	verify := switchValue(f, "verify", "verify the hash chain and report the first line altered, removed or reordered (exit status 1)")
	sinceHead := f.String("since-head", "", "with --verify: a head saved earlier; also catches a log rewritten with its chain recomputed")
	dir := f.String("dir", "", "with --head or --verify: read the audit files in DIR (the key store's directory or its audit/), not through the key store")
	if err := f.parse(switchArgs(args, "polling", "head", "verify")); err != nil {
		return err
	}
	listing := []string{"name", "after", "limit", "last", "exclude-op", "polling"}
	switch {
	case *head.v && *verify.v:
		return errors.New("keyvault audit: give --head or --verify, not both")
	case *head.v || *verify.v:
		for _, fl := range listing {
			if f.Changed(fl) {
				return fmt.Errorf("keyvault audit: --%s selects records to list; it does not go with --head or --verify", fl)
			}
		}
	case f.Changed("since-head"):
		return errors.New("keyvault audit: --since-head goes with --verify")
	case f.Changed("dir"):
		return errors.New("keyvault audit: --dir goes with --head or --verify")
	}
	if *sinceHead != "" && !*verify.v {
		return errors.New("keyvault audit: --since-head goes with --verify")
	}
	if *head.v {
		return auditHead(c, *dir)
	}
	if *verify.v {
		return auditVerify(c, *dir, *sinceHead)
	}
	if f.Changed("last") {
		if f.Changed("limit") {
			return errors.New("keyvault audit: give --limit (the oldest first) or --last (the newest), not both")
		}
		if *last < 1 || *last > 1000 {
			return fmt.Errorf("keyvault audit: --last %d is out of range; use 1 to 1000", *last)
		}
	}
	q := client.AuditQuery{After: *after, Vault: *name, Limit: *limit, Last: *last, HidePolling: !*polling.v}
	if f.Changed("last") {
		q.Limit = 0
	}
	var err error
	if q.ExcludeOps, err = list("exclude-op", *exclude); err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	page, err := ks.AuditQuery(c.Ctx, q)
	if err != nil {
		return err
	}
	if page.HiddenPolling > 0 {
		fmt.Fprintf(c.Stderr, "(%d lines of the host's own event polling not shown; --polling shows them)\n", page.HiddenPolling)
	}
	return showList(c, page.Value, []string{"SEQ", "TIME", "OPERATION", "CALLER", "VAULT", "KID", "RESULT", "ERROR", "NOTE"}, func(r *ksapi.AuditRecord) []string {
		caller := r.CallerObjectID
		if caller == "" && r.ClientIP != "" {
			caller = "from " + r.ClientIP
		}
		if r.ActorObjectID != "" {
			// A host acting for the caller (a set's identity).
			by := r.ActorName
			if by == "" {
				by = r.ActorObjectID
			}
			caller += " by " + by
		}
		return []string{strconv.FormatUint(r.Seq, 10), r.Time.Format("2006-01-02T15:04:05.000Z"), cell(r.OperationName), orDash(cell(caller)),
			orDash(cell(r.Vault)), orDash(cell(r.Kid)), strconv.Itoa(r.ResultCode), orDash(cell(r.ErrorCode)), orDash(cell(r.Message))}
	})
}

// aSwitch is a boolean flag that may stand alone (--head) or take its
// value as every boolean of the CLI does (--head true, --head=false).
type aSwitch struct{ v *bool }

func switchValue(f *flags, name, usage string) aSwitch {
	t := f.boolValue(name, usage+" (true|false; alone means true)")
	f.Lookup(name).NoOptDefVal = "true"
	return aSwitch{&t.val}
}

// switchArgs joins a switch and a true|false after it into one argument,
// which pflag would otherwise take as a stray positional one.
func switchArgs(args []string, names ...string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		for _, n := range names {
			if a == "--"+n && i+1 < len(args) && (args[i+1] == "true" || args[i+1] == "false") {
				a = a + "=" + args[i+1]
				i++
				break
			}
		}
		out = append(out, a)
	}
	return out
}

// cell makes a value from the audit log safe to print in a table: the log
// holds what unauthenticated callers put in their paths, and a terminal
// must not receive their control sequences.
func cell(s string) string {
	if strings.IndexFunc(s, unicode.IsControl) < 0 {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if unicode.IsControl(r) {
			fmt.Fprintf(&b, `\x%02x`, r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// auditDir finds the audit files under dir: dir itself, or dir/audit.
func auditDir(dir string) (string, error) {
	for _, d := range []string{filepath.Join(dir, "audit"), dir} {
		if names, err := auditchain.Files(d); err == nil && len(names) > 0 {
			return d, nil
		}
	}
	if _, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("--dir: %w", err)
	}
	return "", fmt.Errorf("--dir %s holds no audit files (audit.log, audit-<seq>.log), nor does %s", dir, filepath.Join(dir, "audit"))
}

func auditHead(c *Context, dir string) error {
	var h ksapi.AuditHead
	if dir != "" {
		d, err := auditDir(dir)
		if err != nil {
			return err
		}
		names, err := auditchain.Files(d)
		if err != nil {
			return err
		}
		data, err := os.ReadFile(filepath.Join(d, names[len(names)-1]))
		if err != nil {
			return err
		}
		ch, _, _, ok := auditchain.LastLine(data)
		if !ok {
			return fmt.Errorf("%s has no hashed line to take a head from", filepath.Join(d, names[len(names)-1]))
		}
		h = ksapi.AuditHead{Seq: ch.Seq, Hash: ch.Hash.String(), Head: ch.String()}
	} else {
		ks, err := c.Keystore()
		if err != nil {
			return err
		}
		got, err := ks.AuditHead(c.Ctx)
		if err != nil {
			return err
		}
		h = *got
	}
	if c.Output == "json" {
		return c.show(h, nil, nil)
	}
	_, err := fmt.Fprintln(c.Stdout, h.Head)
	return err
}

func auditVerify(c *Context, dir, since string) error {
	var rep ksapi.AuditVerification
	if dir != "" {
		var opt auditchain.Options
		if since != "" {
			h, err := auditchain.ParseHead(since)
			if err != nil {
				return fmt.Errorf("--since-head: %w", err)
			}
			opt.SinceHead = &h
		}
		d, err := auditDir(dir)
		if err != nil {
			return err
		}
		r, err := auditchain.Verify(d, opt)
		if err != nil {
			return err
		}
		// The same shape the key store answers with.
		raw, _ := json.Marshal(r)
		if err := json.Unmarshal(raw, &rep); err != nil {
			return err
		}
	} else {
		ks, err := c.Keystore()
		if err != nil {
			return err
		}
		got, err := ks.AuditVerify(c.Ctx, since)
		if err != nil {
			return err
		}
		rep = *got
	}
	if c.Output == "json" {
		if err := c.show(rep, nil, nil); err != nil {
			return err
		}
	} else if rep.OK {
		fmt.Fprintf(c.Stdout, "audit log verified: %d lines in %d files, from seq %d; head %s\n", rep.Lines, len(rep.Files), rep.FirstSeq, rep.Head)
		if rep.SinceHead != "" {
			fmt.Fprintf(c.Stdout, "the saved head %s is in the log\n", rep.SinceHead)
		}
		if rep.Unchained > 0 {
			fmt.Fprintf(c.Stdout, "%d older lines were written before the hash chain existed and are not verified\n", rep.Unchained)
		}
	}
	if p := rep.Problem; p != nil {
		return fmt.Errorf("audit log %s: %s line %d: %s", p.Kind, p.File, p.Line, p.Message)
	}
	return nil
}
