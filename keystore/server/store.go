package server

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Buckets of the state database. Every change to a vault, key, identity or
// policy, and the events it raises, is written in one bbolt transaction, so
// an acknowledged change survives kill -9 and a torn one never shows.
var (
	bucketMeta       = []byte("meta")
	bucketPrincipals = []byte("principals") // objectId -> principal
	bucketTokens     = []byte("tokens")     // sha256(token) -> objectId
	bucketVaults     = []byte("vaults")     // name -> vault
	bucketKeys       = []byte("keys")       // vault "/" name -> key
	bucketEvents     = []byte("events")     // seq (8 bytes BE) -> api.Event
	bucketWebhooks   = []byte("webhooks")   // id -> webhook
)

func openState(dir string) (*bolt.DB, error) {
	db, err := bolt.Open(filepath.Join(dir, fileState), 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open state database in %s (is another keystored using it?): %w", dir, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketPrincipals, bucketTokens, bucketVaults, bucketKeys, bucketEvents, bucketWebhooks} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

func getJSON(tx *bolt.Tx, bucket []byte, k string, v any) (bool, error) {
	raw := tx.Bucket(bucket).Get([]byte(k))
	if raw == nil {
		return false, nil
	}
	return true, json.Unmarshal(raw, v)
}

func putJSON(tx *bolt.Tx, bucket []byte, k string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Bucket(bucket).Put([]byte(k), raw)
}

func seqKey(seq uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seq)
	return b[:]
}

// initPrincipals creates the default tenant, the administrator and the
// platform principal on first start and writes their tokens to files.
func initPrincipals(db *bolt.DB, dir string, now time.Time) (tenant string, err error) {
	err = db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if t := meta.Get([]byte("tenant")); t != nil {
			tenant = string(t)
			return nil
		}
		tenant = newID()
		for _, p := range []struct{ kind, file string }{{kindAdmin, fileAdminToken}, {kindPlatform, filePlatformToken}} {
			token := newToken()
			pr := principal{ObjectID: newID(), TenantID: tenant, Kind: p.kind, TokenHash: tokenHash(token), Created: now}
			if err := putJSON(tx, bucketPrincipals, pr.ObjectID, pr); err != nil {
				return err
			}
			if err := tx.Bucket(bucketTokens).Put([]byte(pr.TokenHash), []byte(pr.ObjectID)); err != nil {
				return err
			}
			if err := writeFileAtomic(filepath.Join(dir, p.file), []byte(token+"\n")); err != nil {
				return err
			}
		}
		pv := vault{Name: PlatformVault, Location: "local", TenantID: tenant, Sku: "premium", SoftDeleteRetentionInDays: 7, Created: now, AccessPolicies: []accessPolicy{}}
		if err := putJSON(tx, bucketVaults, pv.Name, pv); err != nil {
			return err
		}
		return meta.Put([]byte("tenant"), []byte(tenant))
	})
	return tenant, err
}

func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.Chmod(dir, 0o700)
}
