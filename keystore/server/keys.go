package server

import (
	"hostcrypt/keystore/api"

	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"math/big"
	"net/http"
	"regexp"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

var keyNameRE = regexp.MustCompile(`^[0-9a-zA-Z-]{1,127}$`)

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func unb64(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

func (s *Server) attributes(v *vault, kv *keyVersion) api.KeyAttributes {
	enabled := kv.Enabled
	created, updated := kv.Created.Unix(), kv.Updated.Unix()
	days := v.SoftDeleteRetentionInDays
	level := "Recoverable+Purgeable"
	if v.EnablePurgeProtection {
		level = "Recoverable"
	}
	return api.KeyAttributes{Enabled: &enabled, NBF: unixPtr(kv.NBF), EXP: unixPtr(kv.EXP), Created: &created, Updated: &updated, RecoveryLevel: level, RecoverableDays: &days}
}

func (s *Server) bundle(v *vault, k *key, kv *keyVersion) api.KeyBundle {
	jwk := api.JSONWebKey{Kid: s.kid(k.Vault, k.Name, kv.Version), Kty: kv.Kty, KeyOps: kv.KeyOps}
	if kv.N != nil {
		jwk.N = b64(kv.N)
		jwk.E = b64(big.NewInt(int64(kv.E)).Bytes())
	}
	b := api.KeyBundle{Key: jwk, Attributes: s.attributes(v, kv), Tags: kv.Tags}
	s.deletedFields(k, &b.RecoveryID, &b.DeletedDate, &b.ScheduledPurgeDate)
	return b
}

func (s *Server) deletedFields(k *key, rid *string, dd, spd **int64) {
	if k.Deleted != nil {
		*rid = s.baseURL + "/vaults/" + k.Vault + "/deletedkeys/" + k.Name
		*dd, *spd = unixPtr(k.Deleted), unixPtr(k.PurgeAfter)
	}
}

func keyID(vaultName, name string) string { return vaultName + "/" + name }

// loadKey loads a key that is not deleted.
func loadKey(tx *bolt.Tx, vaultName, name string) (*key, error) {
	k, err := loadAnyKey(tx, vaultName, name)
	if err != nil {
		return nil, err
	}
	if k.Deleted != nil {
		return nil, errf(http.StatusNotFound, "KeyNotFound", "", "key %s in vault %s is deleted; recover it with `hostcrypt key recover --vault-name %s --name %s`", name, vaultName, vaultName, name)
	}
	return k, nil
}

func loadAnyKey(tx *bolt.Tx, vaultName, name string) (*key, error) {
	var k key
	ok, err := getJSON(tx, bucketKeys, keyID(vaultName, name), &k)
	if err != nil {
		return nil, err
	}
	if !ok || len(k.Versions) == 0 {
		return nil, keyNotFound(vaultName, name, "")
	}
	return &k, nil
}

func saveKey(tx *bolt.Tx, k *key) error { return putJSON(tx, bucketKeys, keyID(k.Vault, k.Name), k) }

// vaultKey loads the vault and checks perm, then loads the named key.
func (c *call) vaultKey(tx *bolt.Tx, perm string) (*vault, *key, error) {
	v, err := loadVault(tx, c.vault)
	if err != nil {
		return nil, nil, err
	}
	if err := c.authorize(v, perm); err != nil {
		return nil, nil, err
	}
	k, err := loadKey(tx, v.Name, c.r.PathValue("name"))
	return v, k, err
}

// checkKty validates a key type and size for vault v and returns the
// type as Key Vault spells it.
func checkKty(v *vault, kty string, size int) (string, error) {
	if v.Name == PlatformVault {
		if ct, ok := canonical([]string{"oct-HSM", "oct"}, kty); ok {
			if size != 256 {
				return "", badParam("platform keys are AES-256: key_size must be 256, not %d", size)
			}
			return ct, nil
		}
		return "", badParam("vault %s holds platform AES keys only: use kty oct-HSM with key_size 256", v.Name)
	}
	ct, ok := canonical([]string{"RSA", "RSA-HSM"}, kty)
	if !ok {
		return "", badParam("key type %q is not supported in vault %s; use RSA or RSA-HSM", kty, v.Name)
	}
	if size != 2048 && size != 3072 && size != 4096 {
		return "", badParam("RSA key size %d is not allowed; use 2048, 3072 or 4096", size)
	}
	if ct == "RSA-HSM" && v.Sku != "premium" {
		return "", badParam("RSA-HSM keys need a premium vault and vault %s is %s; create the key as RSA or use a premium vault", v.Name, v.Sku)
	}
	return ct, nil
}

func validKeyOps(ops []string, oct bool) ([]string, error) {
	if ops == nil {
		if oct {
			return []string{"wrapKey", "unwrapKey"}, nil
		}
		return append([]string(nil), allKeyOps...), nil
	}
	out := []string{}
	for _, o := range ops {
		co, ok := canonical(allKeyOps, o)
		if !ok {
			return nil, badParam("key operation %q is not known; use any of %s", o, strings.Join(allKeyOps, ","))
		}
		out = append(out, co)
	}
	return out, nil
}

// The range of nbf and exp: Unix seconds that a time can be stored and
// shown in (RFC 3339 and JSON spell years 0000 to 9999). Times before 1970
// mean nothing for a key's validity, so the range starts at the epoch.
const (
	minUnixTime = 0            // 1970-01-01T00:00:00Z
	maxUnixTime = 253402300799 // 9999-12-31T23:59:59Z
)

// checkAttributes refuses nbf or exp outside [minUnixTime, maxUnixTime],
// before anything is generated or stored.
func checkAttributes(a *api.KeyAttributes) error {
	if a == nil {
		return nil
	}
	for _, f := range []struct {
		name string
		v    *int64
	}{{"nbf", a.NBF}, {"exp", a.EXP}} {
		if f.v != nil && (*f.v < minUnixTime || *f.v > maxUnixTime) {
			return badParam("attributes.%s %d is out of range: use Unix seconds from %d (1970-01-01T00:00:00Z) to %d (9999-12-31T23:59:59Z)", f.name, *f.v, minUnixTime, maxUnixTime)
		}
	}
	return nil
}

// applyAttributes sets nbf/exp/enabled from a request checked by
// checkAttributes.
func applyAttributes(kv *keyVersion, a *api.KeyAttributes) {
	if a == nil {
		return
	}
	if a.Enabled != nil {
		kv.Enabled = *a.Enabled
	}
	if a.NBF != nil {
		t := time.Unix(*a.NBF, 0).UTC()
		kv.NBF = &t
	}
	if a.EXP != nil {
		t := time.Unix(*a.EXP, 0).UTC()
		kv.EXP = &t
		kv.Notified, kv.Expired = false, false
	}
}

// generate makes a new version's key material, sealed under the master key.
func (s *Server) generate(vaultName, name, version, kty string, size int) (*keyVersion, error) {
	kv := &keyVersion{Version: version, Kty: kty, Size: size}
	var plain []byte
	if strings.HasPrefix(kty, "oct") {
		plain = randBytes(size / 8)
	} else {
		pk, err := rsa.GenerateKey(randReader, size)
		if err != nil {
			return nil, err
		}
		kv.N, kv.E = pk.N.Bytes(), pk.E
		plain = x509.MarshalPKCS1PrivateKey(pk)
	}
	defer wipe(plain)
	sealed, err := seal(s.master, sealAD(vaultName, name, version), plain)
	if err != nil {
		return nil, err
	}
	kv.Private = sealed
	return kv, nil
}

func sealAD(vaultName, name, version string) []byte {
	return []byte("hostcrypt keystore key v1/" + vaultName + "/" + name + "/" + version)
}

func (s *Server) createKey(c *call) (any, error) {
	var req api.KeyCreate
	if err := decode(c, &req); err != nil {
		return nil, err
	}
	if err := checkAttributes(req.Attributes); err != nil {
		return nil, err
	}
	name := c.r.PathValue("name")
	if !keyNameRE.MatchString(name) {
		return nil, badParam("key name %q is not valid: 1-127 letters, digits and hyphens", name)
	}
	if req.Crv != "" {
		return nil, badParam("elliptic-curve keys are not supported; use kty RSA or RSA-HSM")
	}
	var kty string
	size := 2048
	err := s.db.View(func(tx *bolt.Tx) error {
		v, err := loadVault(tx, c.vault)
		if err != nil {
			return err
		}
		if err := c.authorize(v, "create"); err != nil {
			return err
		}
		if v.Name == PlatformVault {
			size = 256
		}
		if req.KeySize != nil {
			size = *req.KeySize
		}
		if kty, err = checkKty(v, req.Kty, size); err != nil {
			return err
		}
		if req.PublicExponent != nil && *req.PublicExponent != 65537 {
			return badParam("public_exponent %d is not supported; use 65537", *req.PublicExponent)
		}
		if k, err := loadAnyKey(tx, v.Name, name); err == nil && k.Deleted != nil {
			return errf(http.StatusConflict, "Conflict", "ObjectIsDeletedButRecoverable", "key %s in vault %s is deleted but recoverable; recover it (`hostcrypt key recover`) or purge it before creating a key with this name", name, v.Name)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	ops, err := validKeyOps(req.KeyOps, strings.HasPrefix(kty, "oct"))
	if err != nil {
		return nil, err
	}
	version := newVersion()
	kv, err := s.generate(c.vault, name, version, kty, size)
	if err != nil {
		return nil, err
	}
	now := s.clock.Now().UTC()
	kv.KeyOps, kv.Enabled, kv.Created, kv.Updated, kv.Tags = ops, true, now, now, req.Tags
	applyAttributes(kv, req.Attributes)
	return s.addVersion(c, name, kv, req.Attributes != nil && req.Attributes.EXP != nil, "create")
}

// addVersion stores kv as the new current version of key name, creating
// the key if needed, and raises KeyNewVersionCreated.
func (s *Server) addVersion(c *call, name string, kv *keyVersion, expSet bool, perm string) (any, error) {
	var out api.KeyBundle
	err := s.db.Update(func(tx *bolt.Tx) error {
		v, err := loadVault(tx, c.vault)
		if err != nil {
			return err
		}
		if err := c.authorize(v, perm); err != nil {
			return err
		}
		k, err := loadAnyKey(tx, v.Name, name)
		if err != nil {
			k = &key{Vault: v.Name, Name: name}
		} else if k.Deleted != nil {
			return errf(http.StatusConflict, "Conflict", "ObjectIsDeletedButRecoverable", "key %s in vault %s is deleted but recoverable; recover or purge it first", name, v.Name)
		}
		if !expSet && k.Policy != nil && k.Policy.ExpiryTime != "" {
			d, _ := parseISODuration(k.Policy.ExpiryTime)
			exp := d.addTo(kv.Created)
			kv.EXP = &exp
		}
		k.Versions = append(k.Versions, kv)
		if err := saveKey(tx, k); err != nil {
			return err
		}
		c.kid = s.kid(k.Vault, k.Name, kv.Version)
		out = s.bundle(v, k, kv)
		return s.emitKeyEvent(tx, "KeyNewVersionCreated", k, kv)
	})
	return out, err
}

func (s *Server) importKey(c *call) (any, error) {
	var req api.KeyImport
	if err := decode(c, &req); err != nil {
		return nil, err
	}
	if err := checkAttributes(req.Attributes); err != nil {
		return nil, err
	}
	name := c.r.PathValue("name")
	if !keyNameRE.MatchString(name) {
		return nil, badParam("key name %q is not valid: 1-127 letters, digits and hyphens", name)
	}
	if req.Key == nil {
		return nil, badParam("the request has no key: send {\"key\": <JSON web key with private parts>}")
	}
	j := req.Key
	kty := j.Kty
	if req.HSM != nil && *req.HSM && strings.EqualFold(kty, "RSA") {
		kty = "RSA-HSM"
	}
	var plain []byte
	kv := &keyVersion{Version: newVersion()}
	if strings.HasPrefix(strings.ToLower(kty), "oct") {
		k, err := unb64(j.K)
		if err != nil || len(k) != 32 {
			return nil, badParam("an oct key needs k: 32 bytes, base64url")
		}
		kv.Size, plain = 256, k
	} else {
		pk, err := rsaFromJWK(j)
		if err != nil {
			return nil, err
		}
		kv.Size, kv.N, kv.E = pk.N.BitLen(), pk.N.Bytes(), pk.E
		plain = x509.MarshalPKCS1PrivateKey(pk)
	}
	defer wipe(plain)
	err := s.db.View(func(tx *bolt.Tx) error {
		v, err := loadVault(tx, c.vault)
		if err != nil {
			return err
		}
		if err := c.authorize(v, "import"); err != nil {
			return err
		}
		kv.Kty, err = checkKty(v, kty, kv.Size)
		return err
	})
	if err != nil {
		return nil, err
	}
	ops, err := validKeyOps(j.KeyOps, strings.HasPrefix(kv.Kty, "oct"))
	if err != nil {
		return nil, err
	}
	if kv.Private, err = seal(s.master, sealAD(c.vault, name, kv.Version), plain); err != nil {
		return nil, err
	}
	now := s.clock.Now().UTC()
	kv.KeyOps, kv.Enabled, kv.Created, kv.Updated, kv.Tags = ops, true, now, now, req.Tags
	applyAttributes(kv, req.Attributes)
	return s.addVersion(c, name, kv, req.Attributes != nil && req.Attributes.EXP != nil, "import")
}

func rsaFromJWK(j *api.JSONWebKey) (*rsa.PrivateKey, error) {
	if ct, ok := canonical([]string{"RSA", "RSA-HSM"}, j.Kty); !ok || ct == "" {
		return nil, badParam("key type %q cannot be imported; use an RSA key", j.Kty)
	}
	parts := map[string]string{"n": j.N, "e": j.E, "d": j.D, "p": j.P, "q": j.Q}
	nums := map[string]*big.Int{}
	for name, v := range parts {
		b, err := unb64(v)
		if err != nil || len(b) == 0 {
			return nil, badParam("the RSA key to import lacks %s (base64url); import needs n, e, d, p and q", name)
		}
		nums[name] = new(big.Int).SetBytes(b)
	}
	if !nums["e"].IsInt64() || nums["e"].Int64() > 1<<31-1 {
		return nil, badParam("the RSA public exponent is out of range")
	}
	pk := &rsa.PrivateKey{
		PublicKey: rsa.PublicKey{N: nums["n"], E: int(nums["e"].Int64())},
		D:         nums["d"],
		Primes:    []*big.Int{nums["p"], nums["q"]},
	}
	if n := pk.N.BitLen(); n != 2048 && n != 3072 && n != 4096 {
		return nil, badParam("RSA key size %d is not allowed; use 2048, 3072 or 4096", n)
	}
	if err := pk.Validate(); err != nil {
		return nil, badParam("the RSA key to import is not consistent: %v", err)
	}
	pk.Precompute()
	return pk, nil
}

func (s *Server) getKey(c *call) (any, error) {
	var out api.KeyBundle
	err := s.db.View(func(tx *bolt.Tx) error {
		v, k, err := c.vaultKey(tx, "get")
		if err != nil {
			return err
		}
		kv := k.version(c.r.PathValue("version"))
		if kv == nil {
			return keyNotFound(v.Name, k.Name, c.r.PathValue("version"))
		}
		c.kid = s.kid(k.Vault, k.Name, kv.Version)
		out = s.bundle(v, k, kv)
		return nil
	})
	return out, err
}

func (s *Server) listKeys(c *call) (any, error) {
	out := []api.KeyItem{}
	err := s.db.View(func(tx *bolt.Tx) error {
		v, err := loadVault(tx, c.vault)
		if err != nil {
			return err
		}
		if err := c.authorize(v, "list"); err != nil {
			return err
		}
		return forKeys(tx, v.Name, func(k *key) {
			if k.Deleted == nil {
				kv := k.current()
				out = append(out, api.KeyItem{Kid: s.baseURL + "/vaults/" + v.Name + "/keys/" + k.Name, Attributes: s.attributes(v, kv), Tags: kv.Tags})
			}
		})
	})
	return map[string]any{"value": out, "nextLink": nil}, err
}

func forKeys(tx *bolt.Tx, vaultName string, f func(*key)) error {
	c := tx.Bucket(bucketKeys).Cursor()
	prefix := []byte(vaultName + "/")
	for kk, raw := c.Seek(prefix); kk != nil && strings.HasPrefix(string(kk), string(prefix)); kk, raw = c.Next() {
		var k key
		if err := jsonUnmarshal(raw, &k); err != nil {
			return err
		}
		f(&k)
	}
	return nil
}

func (s *Server) listVersions(c *call) (any, error) {
	out := []api.KeyItem{}
	err := s.db.View(func(tx *bolt.Tx) error {
		v, k, err := c.vaultKey(tx, "list")
		if err != nil {
			return err
		}
		for _, kv := range k.Versions {
			out = append(out, api.KeyItem{Kid: s.kid(k.Vault, k.Name, kv.Version), Attributes: s.attributes(v, kv), Tags: kv.Tags})
		}
		return nil
	})
	return map[string]any{"value": out, "nextLink": nil}, err
}

func (s *Server) updateKey(c *call) (any, error) {
	var req api.KeyUpdate
	if err := decode(c, &req); err != nil {
		return nil, err
	}
	if err := checkAttributes(req.Attributes); err != nil {
		return nil, err
	}
	var out api.KeyBundle
	err := s.db.Update(func(tx *bolt.Tx) error {
		v, k, err := c.vaultKey(tx, "update")
		if err != nil {
			return err
		}
		kv := k.version(c.r.PathValue("version"))
		if kv == nil {
			return keyNotFound(v.Name, k.Name, c.r.PathValue("version"))
		}
		c.kid = s.kid(k.Vault, k.Name, kv.Version)
		if req.KeyOps != nil {
			ops, err := validKeyOps(req.KeyOps, strings.HasPrefix(kv.Kty, "oct"))
			if err != nil {
				return err
			}
			kv.KeyOps = ops
		}
		was := kv.Enabled
		applyAttributes(kv, req.Attributes)
		if req.Tags != nil {
			kv.Tags = req.Tags
		}
		kv.Updated = s.clock.Now().UTC()
		if err := saveKey(tx, k); err != nil {
			return err
		}
		out = s.bundle(v, k, kv)
		switch {
		case was && !kv.Enabled:
			return s.emitKeyEvent(tx, "KeyDisabled", k, kv)
		case !was && kv.Enabled:
			return s.emitKeyEvent(tx, "KeyEnabled", k, kv)
		}
		return nil
	})
	return out, err
}

func (s *Server) deleteKey(c *call) (any, error) {
	var out api.KeyBundle
	err := s.db.Update(func(tx *bolt.Tx) error {
		v, k, err := c.vaultKey(tx, "delete")
		if err != nil {
			return err
		}
		now := s.clock.Now().UTC()
		purge := now.AddDate(0, 0, v.SoftDeleteRetentionInDays)
		k.Deleted, k.PurgeAfter = &now, &purge
		if err := saveKey(tx, k); err != nil {
			return err
		}
		c.kid = s.kid(k.Vault, k.Name, k.current().Version)
		out = s.bundle(v, k, k.current())
		return s.emitKeyEvent(tx, "KeyDeleted", k, k.current())
	})
	return out, err
}

func (s *Server) rotateKey(c *call) (any, error) {
	var cur keyVersion
	err := s.db.View(func(tx *bolt.Tx) error {
		_, k, err := c.vaultKey(tx, "rotate")
		if err == nil {
			cur = *k.current()
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	kv, err := s.newVersionLike(c.vault, c.r.PathValue("name"), &cur)
	if err != nil {
		return nil, err
	}
	return s.addVersion(c, c.r.PathValue("name"), kv, false, "rotate")
}

// newVersionLike generates a new version with the type, size and
// operations of cur, as rotation does.
func (s *Server) newVersionLike(vaultName, name string, cur *keyVersion) (*keyVersion, error) {
	kv, err := s.generate(vaultName, name, newVersion(), cur.Kty, cur.Size)
	if err != nil {
		return nil, err
	}
	now := s.clock.Now().UTC()
	kv.KeyOps, kv.Enabled, kv.Created, kv.Updated = cur.KeyOps, true, now, now
	return kv, nil
}

func (s *Server) listDeletedKeys(c *call) (any, error) {
	out := []api.KeyItem{}
	err := s.db.View(func(tx *bolt.Tx) error {
		v, err := loadVault(tx, c.vault)
		if err != nil {
			return err
		}
		if err := c.authorize(v, "list"); err != nil {
			return err
		}
		return forKeys(tx, v.Name, func(k *key) {
			if k.Deleted != nil {
				kv := k.current()
				it := api.KeyItem{Kid: s.baseURL + "/vaults/" + v.Name + "/keys/" + k.Name, Attributes: s.attributes(v, kv), Tags: kv.Tags}
				s.deletedFields(k, &it.RecoveryID, &it.DeletedDate, &it.ScheduledPurgeDate)
				out = append(out, it)
			}
		})
	})
	return map[string]any{"value": out, "nextLink": nil}, err
}

func (c *call) deletedKey(tx *bolt.Tx, perm string) (*vault, *key, error) {
	v, err := loadVault(tx, c.vault)
	if err != nil {
		return nil, nil, err
	}
	if err := c.authorize(v, perm); err != nil {
		return nil, nil, err
	}
	name := c.r.PathValue("name")
	k, err := loadAnyKey(tx, v.Name, name)
	if err != nil {
		return nil, nil, err
	}
	if k.Deleted == nil {
		return nil, nil, errf(http.StatusNotFound, "KeyNotFound", "", "key %s in vault %s is not deleted", name, v.Name)
	}
	c.kid = "" // a deleted key has no usable kid
	return v, k, nil
}

func (s *Server) getDeletedKey(c *call) (any, error) {
	var out api.KeyBundle
	err := s.db.View(func(tx *bolt.Tx) error {
		v, k, err := c.deletedKey(tx, "get")
		if err == nil {
			out = s.bundle(v, k, k.current())
		}
		return err
	})
	return out, err
}

func (s *Server) recoverKey(c *call) (any, error) {
	var out api.KeyBundle
	err := s.db.Update(func(tx *bolt.Tx) error {
		v, k, err := c.deletedKey(tx, "recover")
		if err != nil {
			return err
		}
		k.Deleted, k.PurgeAfter = nil, nil
		if err := saveKey(tx, k); err != nil {
			return err
		}
		c.kid = s.kid(k.Vault, k.Name, k.current().Version)
		out = s.bundle(v, k, k.current())
		return s.emitKeyEvent(tx, "KeyRecovered", k, k.current())
	})
	return out, err
}

func (s *Server) purgeKey(c *call) (any, error) {
	err := s.db.Update(func(tx *bolt.Tx) error {
		v, k, err := c.deletedKey(tx, "purge")
		if err != nil {
			return err
		}
		if v.EnablePurgeProtection {
			return errf(http.StatusForbidden, "Forbidden", "PurgeProtected", "vault %s has purge protection: key %s cannot be purged before %s, when it is purged automatically; recover it instead if it is needed",
				v.Name, k.Name, k.PurgeAfter.Format(time.RFC3339))
		}
		return s.purge(tx, k)
	})
	if err != nil {
		return nil, err
	}
	c.status = http.StatusNoContent
	return nil, nil
}

func (s *Server) purge(tx *bolt.Tx, k *key) error {
	s.log.Info("key purged", "vault", k.Vault, "key", k.Name)
	if err := tx.Bucket(bucketKeys).Delete([]byte(keyID(k.Vault, k.Name))); err != nil {
		return err
	}
	tx.OnCommit(func() {
		for _, kv := range k.Versions {
			s.privCache.Delete(cacheKey(k.Vault, k.Name, kv.Version))
		}
	})
	return s.emitKeyEvent(tx, "KeyPurged", k, nil)
}
