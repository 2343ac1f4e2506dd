package api

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// ErrNotKeyID is returned, wrapped, by ParseKeyID for a string that is not a
// key id.
var ErrNotKeyID = errors.New("not a key id")

// KeyID is a parsed key id: https://HOST[:PORT]/vaults/VAULT/keys/KEY[/VERSION].
// Key ids carry the address of the key store that holds the key, so that a
// client can call them.
type KeyID struct {
	// Base is the key store: https://HOST[:PORT].
	Base    string
	Vault   string
	Name    string
	Version string // empty for a key id without a version
}

// ParseKeyID parses a key id, with or without its version. It is the one
// parser of the format: the key store's client, the host's key service,
// the control plane and the CLI all read key ids with it.
func ParseKeyID(s string) (KeyID, error) {
	bad := func(why string) (KeyID, error) {
		return KeyID{}, fmt.Errorf("%w: %q %s; a key id looks like https://HOST:PORT/vaults/VAULT/keys/KEY/VERSION (hostcrypt key show prints it as kid)", ErrNotKeyID, s, why)
	}
	u, err := url.Parse(s)
	if err != nil {
		return bad("is not a URL")
	}
	if u.Scheme != "https" || u.Host == "" {
		return bad("is not an https:// address of a key store")
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return bad("has user, query or fragment parts")
	}
	p := strings.Split(strings.Trim(u.Path, "/"), "/")
	if (len(p) != 4 && len(p) != 5) || p[0] != "vaults" || p[2] != "keys" {
		return bad("has no /vaults/VAULT/keys/KEY path")
	}
	k := KeyID{Base: u.Scheme + "://" + u.Host, Vault: p[1], Name: p[3]}
	if len(p) == 5 {
		k.Version = p[4]
	}
	if k.Vault == "" || k.Name == "" || (len(p) == 5 && k.Version == "") {
		return bad("has an empty part")
	}
	return k, nil
}

// ParseVersionedKeyID is ParseKeyID for a key id that must name a version,
// as a disk encryption set's key does.
func ParseVersionedKeyID(s string) (KeyID, error) {
	k, err := ParseKeyID(s)
	if err == nil && k.Version == "" {
		err = fmt.Errorf("%w: %q has no version; give the key id with its version, https://HOST:PORT/vaults/VAULT/keys/KEY/VERSION (hostcrypt key show prints it as kid)", ErrNotKeyID, s)
	}
	return k, err
}

// Path is the key id's path on its key store: /vaults/V/keys/K[/VERSION].
func (k KeyID) Path() string {
	p := "/vaults/" + k.Vault + "/keys/" + k.Name
	if k.Version != "" {
		p += "/" + k.Version
	}
	return p
}

// String is the key id as the key store writes it.
func (k KeyID) String() string { return k.Base + k.Path() }

// Versionless is the key id of the key itself, whose current version the key
// store answers with.
func (k KeyID) Versionless() KeyID {
	k.Version = ""
	return k
}
