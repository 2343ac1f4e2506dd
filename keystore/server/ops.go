package server

import (
	"hostcrypt/keystore/api"

	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"math/big"
	"net/http"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"hostcrypt/crypto"
)

var randReader = rand.Reader

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func cacheKey(vaultName, name, version string) string {
	return vaultName + "/" + name + "/" + version
}

// Largest value accepted for wrapping: keys, not data.
const maxWrapInput = 512

func (s *Server) wrapKey(c *call) (any, error)   { return s.keyOp(c, true) }
func (s *Server) unwrapKey(c *call) (any, error) { return s.keyOp(c, false) }

func (s *Server) keyOp(c *call, wrap bool) (any, error) {
	var req api.KeyOperation
	if err := decode(c, &req); err != nil {
		return nil, err
	}
	in, err := unb64(req.Value)
	if err != nil {
		return nil, badParam("value is not base64url: %v", err)
	}
	if len(in) == 0 || len(in) > maxWrapInput {
		return nil, badParam("value must be 1 to %d bytes, not %d", maxWrapInput, len(in))
	}
	op, perm := "unwrapKey", "unwrapKey"
	if wrap {
		op, perm = "wrapKey", "wrapKey"
	}
	var kv keyVersion
	err = s.db.View(func(tx *bolt.Tx) error {
		v, k, err := c.vaultKey(tx, perm)
		if err != nil {
			return err
		}
		ver := c.r.PathValue("version")
		p := k.version(ver)
		if p == nil {
			return keyNotFound(v.Name, k.Name, ver)
		}
		kv = *p
		c.kid = s.kid(k.Vault, k.Name, kv.Version)
		return nil
	})
	if err != nil {
		return nil, err
	}
	name := c.r.PathValue("name")
	where := "version " + kv.Version + " of key " + name + " in vault " + c.vault
	if !kv.Enabled {
		return nil, errf(http.StatusForbidden, "Forbidden", "KeyDisabled", "%s is disabled; enable it with `hostcrypt key set-attributes --vault-name %s --name %s --version %s --enabled true`", where, c.vault, name, kv.Version)
	}
	if !kv.hasOp(op) {
		return nil, errf(http.StatusForbidden, "Forbidden", "KeyOperationForbidden", "%s does not allow operation %s (key_ops: %s); add it with `hostcrypt key set-attributes --ops`", where, op, strings.Join(kv.KeyOps, ","))
	}
	now := s.clock.Now()
	// As in Key Vault, an expired or not-yet-valid key still unwraps what
	// it wrapped; it only refuses new wraps.
	if wrap && kv.EXP != nil && !now.Before(*kv.EXP) {
		return nil, errf(http.StatusForbidden, "Forbidden", "KeyExpired", "%s expired at %s and cannot wrap; rotate the key or set a later --expires", where, kv.EXP.Format("2006-01-02T15:04:05Z07:00"))
	}
	if wrap && kv.NBF != nil && now.Before(*kv.NBF) {
		return nil, errf(http.StatusForbidden, "Forbidden", "KeyNotYetValid", "%s is not valid before %s and cannot wrap yet", where, kv.NBF.Format("2006-01-02T15:04:05Z07:00"))
	}
	start := time.Now()
	out, err := s.cryptoOp(c.vault, name, &kv, req.Alg, wrap, in)
	s.met.keyOpTimer(wrap, kv.Size).Observe(time.Since(start).Seconds())
	if err != nil {
		return nil, err
	}
	return api.KeyOperationResult{Kid: c.kid, Value: b64(out)}, nil
}

func (s *Server) cryptoOp(vaultName, name string, kv *keyVersion, alg string, wrap bool, in []byte) ([]byte, error) {
	where := "version " + kv.Version + " of key " + name + " in vault " + vaultName
	if strings.HasPrefix(kv.Kty, "oct") {
		if alg != "A256KWP" {
			return nil, badParam("algorithm %q is not supported by platform key %s; use A256KWP", alg, name)
		}
		kek, err := s.secret(vaultName, name, kv)
		if err != nil {
			return nil, err
		}
		if wrap {
			return crypto.WrapAESKWP(kek.([]byte), in)
		}
		out, err := crypto.UnwrapAESKWP(kek.([]byte), in)
		if err != nil {
			return nil, badParam("the value does not unwrap with %s: it was wrapped by another key or altered", where)
		}
		return out, nil
	}
	if alg != crypto.WrapRSAOAEP256 && alg != crypto.WrapRSAOAEP {
		return nil, badParam("algorithm %q is not supported; use RSA-OAEP-256 or RSA-OAEP", alg)
	}
	if wrap {
		pub := &rsa.PublicKey{N: new(big.Int).SetBytes(kv.N), E: kv.E}
		out, err := crypto.WrapRSA(alg, pub, in)
		if err != nil {
			return nil, badParam("value is too long to wrap with %s", where)
		}
		return out, nil
	}
	pk, err := s.secret(vaultName, name, kv)
	if err != nil {
		return nil, err
	}
	out, err := crypto.UnwrapRSA(alg, pk.(*rsa.PrivateKey), in)
	if err != nil {
		return nil, badParam("the value does not unwrap with %s and %s: it was wrapped by another key version or algorithm, or altered", where, alg)
	}
	return out, nil
}

// secret returns the unsealed key material of a version, cached in memory
// so that the hot unwrap path does no unsealing or parsing.
func (s *Server) secret(vaultName, name string, kv *keyVersion) (any, error) {
	ck := cacheKey(vaultName, name, kv.Version)
	if v, ok := s.privCache.Load(ck); ok {
		return v, nil
	}
	plain, err := open(s.master, sealAD(vaultName, name, kv.Version), kv.Private)
	if err != nil {
		return nil, err // integrity failure of the state; logged as internal
	}
	var v any = plain
	if !strings.HasPrefix(kv.Kty, "oct") {
		pk, err := x509.ParsePKCS1PrivateKey(plain)
		wipe(plain)
		if err != nil {
			return nil, err
		}
		pk.Precompute()
		v = pk
	}
	s.privCache.Store(ck, v)
	return v, nil
}

// backupBlob is the opaque key backup: the key with its versions' material
// sealed under a key derived from the master key, bound to the tenant.
type backupBlob struct {
	Format   string `json:"format"`
	TenantID string `json:"tenantId"`
	Sealed   []byte `json:"sealed"`
}

const backupFormat = "hostcrypt-key-backup/1"

func (s *Server) backupKeyKey() []byte {
	m := hmac.New(sha256.New, s.master)
	m.Write([]byte("hostcrypt keystore backup key v1"))
	return m.Sum(nil)
}

func (s *Server) backupKey(c *call) (any, error) {
	var blob backupBlob
	err := s.db.View(func(tx *bolt.Tx) error {
		v, k, err := c.vaultKey(tx, "backup")
		if err != nil {
			return err
		}
		c.kid = s.kid(k.Vault, k.Name, k.current().Version)
		// Re-seal every version's material under the backup key so that
		// a restore can bind it to the new vault and name.
		out := *k
		out.Versions = nil
		for _, kv := range k.Versions {
			plain, err := open(s.master, sealAD(k.Vault, k.Name, kv.Version), kv.Private)
			if err != nil {
				return err
			}
			cp := *kv
			cp.Private = plain
			out.Versions = append(out.Versions, &cp)
		}
		raw, _ := json.Marshal(out)
		for _, kv := range out.Versions {
			wipe(kv.Private)
		}
		bk := s.backupKeyKey()
		defer wipe(bk)
		blob = backupBlob{Format: backupFormat, TenantID: v.TenantID}
		blob.Sealed, err = seal(bk, []byte(backupFormat+"/"+v.TenantID), raw)
		wipe(raw)
		return err
	})
	if err != nil {
		return nil, err
	}
	raw, _ := json.Marshal(blob)
	return map[string]string{"value": b64(raw)}, nil
}

func (s *Server) restoreKey(c *call) (any, error) {
	var req api.Blob
	if err := decode(c, &req); err != nil {
		return nil, err
	}
	var out api.KeyBundle
	err := s.db.Update(func(tx *bolt.Tx) error {
		v, err := loadVault(tx, c.vault)
		if err != nil {
			return err
		}
		if err := c.authorize(v, "restore"); err != nil {
			return err
		}
		raw, err := unb64(req.Value)
		var blob backupBlob
		if err != nil || json.Unmarshal(raw, &blob) != nil || blob.Format != backupFormat {
			return badParam("value is not a key backup made by `hostcrypt key backup`")
		}
		if blob.TenantID != v.TenantID {
			return errf(http.StatusBadRequest, "BadParameter", "BackupTenantMismatch", "the backup belongs to tenant %s and vault %s is in tenant %s; a key backup restores only into a vault of the same tenant", blob.TenantID, v.Name, v.TenantID)
		}
		bk := s.backupKeyKey()
		defer wipe(bk)
		plain, err := open(bk, []byte(backupFormat+"/"+blob.TenantID), blob.Sealed)
		if err != nil {
			return badParam("the backup does not open: it was made by another key store or altered")
		}
		defer wipe(plain)
		var k key
		if err := json.Unmarshal(plain, &k); err != nil || len(k.Versions) == 0 {
			return badParam("the backup holds no key")
		}
		if _, err := checkKty(v, k.current().Kty, k.current().Size); err != nil {
			return err
		}
		if _, err := loadAnyKey(tx, v.Name, k.Name); err == nil {
			return errf(http.StatusConflict, "Conflict", "KeyAlreadyExists", "vault %s already has a key named %s (perhaps deleted); purge or rename it before restoring", v.Name, k.Name)
		}
		k.Vault, k.Deleted, k.PurgeAfter = v.Name, nil, nil
		for _, kv := range k.Versions {
			sealed, err := seal(s.master, sealAD(k.Vault, k.Name, kv.Version), kv.Private)
			wipe(kv.Private)
			if err != nil {
				return err
			}
			kv.Private = sealed
		}
		if err := saveKey(tx, &k); err != nil {
			return err
		}
		c.kid = s.kid(k.Vault, k.Name, k.current().Version)
		out = s.bundle(v, &k, k.current())
		return s.emitKeyEvent(tx, "KeyNewVersionCreated", &k, k.current())
	})
	return out, err
}
