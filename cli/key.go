package cli

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	ksapi "hostcrypt/keystore/api"
	"math/big"
	"os"
	"strings"

	"hostcrypt/keystore/client"
)

func keyCommands() []Command {
	return []Command{
		{"key", "create", "create a key, or a new version of one", keyCreate},
		{"key", "import", "import an RSA key from a PEM or JWK file", keyImport},
		{"key", "show", "show a key version (public parts only)", keyShow},
		{"key", "list", "list the keys of a vault", keyList},
		{"key", "list-versions", "list the versions of a key", keyListVersions},
		{"key", "list-deleted", "list the soft-deleted keys of a vault", keyListDeleted},
		{"key", "set-attributes", "enable, disable, expire or retag a key version", keySetAttributes},
		{"key", "rotate", "create a new version of a key", keyRotate},
		{"key", "rotation-policy", "show, or with flags set, a key's rotation policy", keyRotationPolicy},
		{"key", "delete", "soft-delete a key", keyDelete},
		{"key", "recover", "recover a soft-deleted key", keyRecover},
		{"key", "purge", "purge a soft-deleted key for good", keyPurge},
		{"key", "backup", "write an encrypted backup of a key to a file", keyBackup},
		{"key", "restore", "restore a key backup into a vault of the same tenant", keyRestore},
		{"key", "wrap", "wrap a key (base64) with a key version", keyWrap},
		{"key", "unwrap", "unwrap a wrapped key (base64) with a key version", keyUnwrap},
	}
}

var keyHeader = []string{"KID", "KTY", "ENABLED", "NOT-BEFORE", "EXPIRES", "CREATED"}

func bundleRow(b *ksapi.KeyBundle) []string {
	a := b.Attributes
	return []string{b.Key.Kid, b.Key.Kty, boolStr(a.Enabled), unixTime(a.NBF), unixTime(a.EXP), unixTime(a.Created)}
}

func itemRow(it *ksapi.KeyItem) []string {
	a := it.Attributes
	return []string{it.Kid, "-", boolStr(a.Enabled), unixTime(a.NBF), unixTime(a.EXP), unixTime(a.Created)}
}

func (c *Context) showKey(b *ksapi.KeyBundle) error {
	return c.show(b, keyHeader, [][]string{bundleRow(b)})
}

// keyRef is how a verb names a key: --vault-name and --name (with
// --version where a version matters), or --id with a key id.
type keyRef struct {
	vault, name, version, id *string
	f                        *flags
}

func (f *flags) keyRef(withVersion bool) keyRef {
	r := keyRef{vault: f.requiredString("vault-name", "vault name"), name: f.requiredString("name", "key name"), f: f}
	if withVersion {
		r.version = f.String("version", "", "key version (default: the current one)")
		r.id = f.String("id", "", "key id https://HOST:PORT/vaults/V/keys/K[/VERSION], instead of --vault-name, --name and --version")
		f.required = f.required[:len(f.required)-2] // checked in resolve
	}
	return r
}

// resolve fills vault, name and version from --id when it was given.
func (r keyRef) resolve() error {
	if r.id == nil {
		return nil
	}
	if *r.id == "" {
		if *r.vault == "" || *r.name == "" {
			return fmt.Errorf("%s: name the key with --vault-name and --name, or with --id", r.f.c.Command)
		}
		return nil
	}
	if *r.vault != "" || *r.name != "" || *r.version != "" {
		return fmt.Errorf("%s: give --id or --vault-name/--name/--version, not both", r.f.c.Command)
	}
	k, err := ksapi.ParseKeyID(*r.id)
	if err != nil {
		return fmt.Errorf("--id: %w", err)
	}
	*r.vault, *r.name, *r.version = k.Vault, k.Name, k.Version
	return nil
}

// attrFlags are the attribute flags shared by create, import and set-attributes.
type attrFlags struct {
	enabled         *tristate
	expires, notBef *string
	ops, tagsFlag   *string
}

func (f *flags) attrFlags() attrFlags {
	return attrFlags{
		enabled:  f.boolValue("enabled", "true or false"),
		expires:  f.String("expires", "", "expiry time (RFC 3339 or YYYY-MM-DD)"),
		notBef:   f.String("not-before", "", "not-before time (RFC 3339 or YYYY-MM-DD)"),
		ops:      f.String("ops", "", "permitted operations, comma-separated: encrypt,decrypt,sign,verify,wrapKey,unwrapKey"),
		tagsFlag: f.String("tags", "", "tags, comma-separated key=value"),
	}
}

func (a attrFlags) build() (*ksapi.KeyAttributes, []string, map[string]string, error) {
	exp, err := timeArg("expires", *a.expires)
	if err != nil {
		return nil, nil, nil, err
	}
	nbf, err := timeArg("not-before", *a.notBef)
	if err != nil {
		return nil, nil, nil, err
	}
	ops, err := list("ops", *a.ops)
	if err != nil {
		return nil, nil, nil, err
	}
	tg, err := tags(*a.tagsFlag)
	if err != nil {
		return nil, nil, nil, err
	}
	var attrs *ksapi.KeyAttributes
	if a.enabled.set || exp != nil || nbf != nil {
		attrs = &ksapi.KeyAttributes{Enabled: a.enabled.ptr(), EXP: exp, NBF: nbf}
	}
	return attrs, ops, tg, nil
}

func keyCreate(c *Context, args []string) error {
	f := newFlags(c)
	ref := f.keyRef(false)
	kty := f.String("kty", "RSA", "RSA or RSA-HSM (premium vaults); oct-HSM in the platform vault")
	size := f.Int("size", 0, "RSA key size: 2048, 3072 or 4096 (default 2048)")
	af := f.attrFlags()
	if err := f.parse(args); err != nil {
		return err
	}
	attrs, ops, tg, err := af.build()
	if err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	req := ksapi.KeyCreate{Kty: *kty, KeyOps: ops, Attributes: attrs, Tags: tg}
	if *size != 0 {
		req.KeySize = size // else the key type's default
	}
	b, err := ks.CreateKey(c.Ctx, *ref.vault, *ref.name, req)
	if err != nil {
		return err
	}
	return c.showKey(b)
}

func keyImport(c *Context, args []string) error {
	f := newFlags(c)
	ref := f.keyRef(false)
	pemFile := f.String("pem-file", "", "PEM file with an RSA private key (PKCS#1 or PKCS#8)")
	jwkFile := f.String("jwk-file", "", "JSON web key file with private parts")
	hsm := f.boolValue("hsm", "import as RSA-HSM (premium vaults)")
	af := f.attrFlags()
	if err := f.parse(args); err != nil {
		return err
	}
	if (*pemFile == "") == (*jwkFile == "") {
		return errors.New("key import: give exactly one of --pem-file and --jwk-file")
	}
	attrs, ops, tg, err := af.build()
	if err != nil {
		return err
	}
	var jwk ksapi.JSONWebKey
	if *pemFile != "" {
		if jwk, err = jwkFromPEM(*pemFile); err != nil {
			return err
		}
	} else {
		raw, err := os.ReadFile(*jwkFile)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(raw, &jwk); err != nil {
			return fmt.Errorf("%s is not a JSON web key: %v", *jwkFile, err)
		}
	}
	if ops != nil {
		jwk.KeyOps = ops
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	b, err := ks.ImportKey(c.Ctx, *ref.vault, *ref.name, ksapi.KeyImport{Key: &jwk, HSM: hsm.ptr(), Attributes: attrs, Tags: tg})
	if err != nil {
		return err
	}
	return c.showKey(b)
}

func jwkFromPEM(path string) (ksapi.JSONWebKey, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return ksapi.JSONWebKey{}, err
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		return ksapi.JSONWebKey{}, fmt.Errorf("%s holds no PEM block", path)
	}
	var pk *rsa.PrivateKey
	switch block.Type {
	case "RSA PRIVATE KEY":
		pk, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		var k any
		if k, err = x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
			var ok bool
			if pk, ok = k.(*rsa.PrivateKey); !ok {
				err = errors.New("not an RSA key")
			}
		}
	default:
		err = fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
	if err != nil {
		return ksapi.JSONWebKey{}, fmt.Errorf("%s: %v", path, err)
	}
	enc := func(b *big.Int) string { return base64.RawURLEncoding.EncodeToString(b.Bytes()) }
	return ksapi.JSONWebKey{Kty: "RSA", N: enc(pk.N), E: enc(big.NewInt(int64(pk.E))), D: enc(pk.D), P: enc(pk.Primes[0]), Q: enc(pk.Primes[1])}, nil
}

func keyShow(c *Context, args []string) error {
	f := newFlags(c)
	ref := f.keyRef(true)
	if err := f.parse(args); err != nil {
		return err
	}
	if err := ref.resolve(); err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	b, err := ks.GetKey(c.Ctx, *ref.vault, *ref.name, *ref.version)
	if err != nil {
		return err
	}
	return c.showKey(b)
}

func keyList(c *Context, args []string) error {
	f := newFlags(c)
	vault := f.requiredString("vault-name", "vault name")
	if err := f.parse(args); err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	items, err := ks.ListKeys(c.Ctx, *vault)
	if err != nil {
		return err
	}
	return showList(c, items, keyHeader, itemRow)
}

func keyListVersions(c *Context, args []string) error {
	f := newFlags(c)
	ref := f.keyRef(false)
	if err := f.parse(args); err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	items, err := ks.ListKeyVersions(c.Ctx, *ref.vault, *ref.name)
	if err != nil {
		return err
	}
	return showList(c, items, keyHeader, itemRow)
}

func keyListDeleted(c *Context, args []string) error {
	f := newFlags(c)
	vault := f.requiredString("vault-name", "vault name")
	if err := f.parse(args); err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	items, err := ks.ListDeletedKeys(c.Ctx, *vault)
	if err != nil {
		return err
	}
	return showList(c, items, []string{"KID", "DELETED", "SCHEDULED-PURGE"}, func(it *ksapi.KeyItem) []string {
		return []string{it.Kid, unixTime(it.DeletedDate), unixTime(it.ScheduledPurgeDate)}
	})
}

func keySetAttributes(c *Context, args []string) error {
	f := newFlags(c)
	ref := f.keyRef(true)
	af := f.attrFlags()
	if err := f.parse(args); err != nil {
		return err
	}
	if err := ref.resolve(); err != nil {
		return err
	}
	attrs, ops, tg, err := af.build()
	if err != nil {
		return err
	}
	if attrs == nil && ops == nil && tg == nil {
		return errors.New("key set-attributes: nothing to change; give --enabled, --expires, --not-before, --ops or --tags")
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	b, err := ks.UpdateKey(c.Ctx, *ref.vault, *ref.name, *ref.version, ksapi.KeyUpdate{Attributes: attrs, KeyOps: ops, Tags: tg})
	if err != nil {
		return err
	}
	return c.showKey(b)
}

// keyAction runs a verb that takes only --vault-name and --name and answers
// with a key.
func keyAction(c *Context, args []string, op func(ks *client.Client, vault, name string) (*ksapi.KeyBundle, error)) error {
	f := newFlags(c)
	ref := f.keyRef(false)
	if err := f.parse(args); err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	b, err := op(ks, *ref.vault, *ref.name)
	if err != nil {
		return err
	}
	return c.showKey(b)
}

func keyRotate(c *Context, args []string) error {
	return keyAction(c, args, func(ks *client.Client, vault, name string) (*ksapi.KeyBundle, error) {
		return ks.RotateKey(c.Ctx, vault, name)
	})
}

func keyRotationPolicy(c *Context, args []string) error {
	f := newFlags(c)
	ref := f.keyRef(false)
	after := f.String("rotate-after", "", "rotate this long after the current version's creation (ISO 8601, e.g. P90D)")
	before := f.String("rotate-before-expiry", "", "rotate this long before expiry (ISO 8601)")
	notify := f.String("notify-before-expiry", "", "raise KeyNearExpiry this long before expiry (ISO 8601)")
	expiry := f.String("expiry-time", "", "expiry of new versions (ISO 8601, at least P28D)")
	value := f.String("value", "", "the whole policy as JSON, or @FILE")
	reset := f.boolValue("reset", "true restores the default policy")
	if err := f.parse(args); err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	setting := *after != "" || *before != "" || *notify != "" || *expiry != "" || *value != "" || (reset.set && reset.val)
	if !setting {
		p, err := ks.GetRotationPolicy(c.Ctx, *ref.vault, *ref.name)
		if err != nil {
			return err
		}
		return c.showPolicy(p)
	}
	var p ksapi.RotationPolicy
	switch {
	case reset.set && reset.val:
	case *value != "":
		raw := []byte(*value)
		if strings.HasPrefix(*value, "@") {
			if raw, err = os.ReadFile((*value)[1:]); err != nil {
				return err
			}
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			return fmt.Errorf("--value is not a rotation policy: %v", err)
		}
	default:
		if *after != "" && *before != "" {
			return errors.New("give one of --rotate-after and --rotate-before-expiry")
		}
		p.LifetimeActions = []ksapi.LifetimeAction{}
		if *after != "" || *before != "" {
			p.LifetimeActions = append(p.LifetimeActions, ksapi.LifetimeAction{Trigger: ksapi.Trigger{TimeAfterCreate: *after, TimeBeforeExpiry: *before}, Action: ksapi.Action{Type: "Rotate"}})
		}
		if *notify != "" {
			p.LifetimeActions = append(p.LifetimeActions, ksapi.LifetimeAction{Trigger: ksapi.Trigger{TimeBeforeExpiry: *notify}, Action: ksapi.Action{Type: "Notify"}})
		}
		p.Attributes.ExpiryTime = *expiry
	}
	out, err := ks.SetRotationPolicy(c.Ctx, *ref.vault, *ref.name, p)
	if err != nil {
		return err
	}
	return c.showPolicy(out)
}

func (c *Context) showPolicy(p *ksapi.RotationPolicy) error {
	rows := [][]string{}
	for _, la := range p.LifetimeActions {
		t := la.Trigger
		when := "after create " + t.TimeAfterCreate
		if t.TimeBeforeExpiry != "" {
			when = "before expiry " + t.TimeBeforeExpiry
		}
		rows = append(rows, []string{la.Action.Type, when, orDash(p.Attributes.ExpiryTime)})
	}
	return c.show(p, []string{"ACTION", "TRIGGER", "EXPIRY-TIME"}, rows)
}

func keyDelete(c *Context, args []string) error {
	f := newFlags(c)
	ref := f.keyRef(false)
	if err := f.parse(args); err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	b, err := ks.DeleteKey(c.Ctx, *ref.vault, *ref.name)
	if err != nil {
		return err
	}
	return c.show(b, []string{"RECOVERY-ID", "DELETED", "SCHEDULED-PURGE"}, [][]string{{b.RecoveryID, unixTime(b.DeletedDate), unixTime(b.ScheduledPurgeDate)}})
}

func keyRecover(c *Context, args []string) error {
	return keyAction(c, args, func(ks *client.Client, vault, name string) (*ksapi.KeyBundle, error) {
		return ks.RecoverKey(c.Ctx, vault, name)
	})
}

func keyPurge(c *Context, args []string) error {
	f := newFlags(c)
	ref := f.keyRef(false)
	if err := f.parse(args); err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	return ks.PurgeKey(c.Ctx, *ref.vault, *ref.name)
}

func keyBackup(c *Context, args []string) error {
	f := newFlags(c)
	ref := f.keyRef(false)
	file := f.requiredString("file", "file to write the backup to")
	if err := f.parse(args); err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	blob, err := ks.BackupKey(c.Ctx, *ref.vault, *ref.name)
	if err != nil {
		return err
	}
	return writeSecret(*file, blob)
}

func keyRestore(c *Context, args []string) error {
	f := newFlags(c)
	vault := f.requiredString("vault-name", "vault to restore into")
	file := f.requiredString("file", "backup file written by key backup")
	if err := f.parse(args); err != nil {
		return err
	}
	blob, err := os.ReadFile(*file)
	if err != nil {
		return err
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	b, err := ks.RestoreKey(c.Ctx, *vault, strings.TrimSpace(string(blob)))
	if err != nil {
		return err
	}
	return c.showKey(b)
}

func writeSecret(path, content string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func keyWrap(c *Context, args []string) error   { return keyOp(c, args, true) }
func keyUnwrap(c *Context, args []string) error { return keyOp(c, args, false) }

func keyOp(c *Context, args []string, wrap bool) error {
	f := newFlags(c)
	id := f.String("id", "", "key id (https://HOST:PORT/vaults/V/keys/K[/VERSION]); or use --vault-name/--name/--version")
	vault := f.String("vault-name", "", "vault name")
	name := f.String("name", "", "key name")
	version := f.String("version", "", "key version (default: the current one)")
	alg := f.String("algorithm", ksapi.RSAOAEP256, "RSA-OAEP-256, RSA-OAEP, or A256KWP for platform keys")
	value := f.String("value", "", "the input, base64 (standard or URL alphabet) (required)")
	f.required = append(f.required, "value")
	if err := f.parse(args); err != nil {
		return err
	}
	in, err := decodeB64(*value)
	if err != nil {
		return fmt.Errorf("--value is not base64: %v", err)
	}
	ks, err := c.Keystore()
	if err != nil {
		return err
	}
	kid := *id
	if kid == "" {
		if *vault == "" || *name == "" {
			return errors.New("name the key with --id, or with --vault-name and --name")
		}
		kid = ks.BaseURL() + "/vaults/" + *vault + "/keys/" + *name
		if *version != "" {
			kid += "/" + *version
		}
	}
	var used string
	var out []byte
	if wrap {
		used, out, err = ks.WrapKey(c.Ctx, kid, *alg, in)
	} else {
		used, out, err = ks.UnwrapKey(c.Ctx, kid, *alg, in)
	}
	if err != nil {
		return err
	}
	res := map[string]string{"kid": used, "value": base64.RawURLEncoding.EncodeToString(out)}
	return c.show(res, []string{"KID", "VALUE"}, [][]string{{res["kid"], res["value"]}})
}

func decodeB64(s string) ([]byte, error) {
	s = strings.TrimRight(strings.TrimSpace(s), "=")
	if strings.ContainsAny(s, "+/") {
		return base64.RawStdEncoding.DecodeString(s)
	}
	return base64.RawURLEncoding.DecodeString(s)
}
