package server

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"hostcrypt/internal/atomicfile"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/crypto/argon2"

	"hostcrypt/crypto"
)

// Files in the state directory.
const (
	fileMasterKey     = "master.key"
	fileCA            = "ca.pem"
	fileCAKey         = "ca-key.pem"
	fileServerCert    = "server.pem"
	fileServerKey     = "server-key.pem"
	fileAdminToken    = "admin.token"
	filePlatformToken = "platform.token"
	fileState         = "state.db"
	fileAddress       = "address"
	dirAudit          = "audit"
)

// ErrPassphraseRequired is returned when the master key is sealed with a
// passphrase and none was given, or the one given is wrong.
var ErrPassphraseRequired = errors.New("the master key is sealed with a passphrase")

// masterKeyFile is the on-disk form of the master key. Without a passphrase
// the key is stored as is (the directory's permissions protect it); with
// one it is sealed under an argon2id-derived key so that a copy of the
// directory alone opens nothing.
type masterKeyFile struct {
	Version int    `json:"version"`
	KDF     string `json:"kdf"` // "none" or "argon2id"
	Key     []byte `json:"key,omitempty"`
	Salt    []byte `json:"salt,omitempty"`
	Time    uint32 `json:"time,omitempty"`
	Memory  uint32 `json:"memoryKiB,omitempty"`
	Threads uint8  `json:"threads,omitempty"`
	Sealed  []byte `json:"sealed,omitempty"`
}

const masterKeyAD = "hostcrypt keystore master key v1"

// loadOrCreateMasterKey returns the master key, creating it on first start.
func loadOrCreateMasterKey(dir string, passphrase []byte) (key []byte, created bool, err error) {
	path := filepath.Join(dir, fileMasterKey)
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key = make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, false, err
		}
		mf := masterKeyFile{Version: 1, KDF: "none", Key: key}
		if passphrase != nil {
			mf = masterKeyFile{Version: 1, KDF: "argon2id", Salt: randBytes(16), Time: 3, Memory: 64 * 1024, Threads: 4}
			kek := argon2.IDKey(passphrase, mf.Salt, mf.Time, mf.Memory, mf.Threads, 32)
			mf.Sealed, err = seal(kek, []byte(masterKeyAD), key)
			wipe(kek)
			if err != nil {
				return nil, false, err
			}
		}
		b, _ := json.Marshal(mf)
		if err := writeFileAtomic(path, b); err != nil {
			return nil, false, err
		}
		return key, true, nil
	}
	if err != nil {
		return nil, false, err
	}
	var mf masterKeyFile
	if err := json.Unmarshal(raw, &mf); err != nil || mf.Version != 1 {
		return nil, false, fmt.Errorf("%s is not a master key file this version understands", path)
	}
	switch mf.KDF {
	case "none":
		if passphrase != nil {
			return nil, false, fmt.Errorf("the master key in %s is not sealed with a passphrase; start without --passphrase-file", dir)
		}
		if len(mf.Key) != 32 {
			return nil, false, fmt.Errorf("%s holds a master key of the wrong length", path)
		}
		return mf.Key, false, nil
	case "argon2id":
		if passphrase == nil {
			return nil, false, fmt.Errorf("%w: start with --passphrase-file", ErrPassphraseRequired)
		}
		kek := argon2.IDKey(passphrase, mf.Salt, mf.Time, mf.Memory, mf.Threads, 32)
		defer wipe(kek)
		key, err := open(kek, []byte(masterKeyAD), mf.Sealed)
		if err != nil {
			return nil, false, fmt.Errorf("%w: the passphrase does not open it", ErrPassphraseRequired)
		}
		return key, false, nil
	}
	return nil, false, fmt.Errorf("%s uses an unknown key derivation %q", path, mf.KDF)
}

// seal encrypts plaintext with AES-256-GCM; the output is nonce||ciphertext.
func seal(key, ad, plaintext []byte) ([]byte, error) {
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	nonce := randBytes(aead.NonceSize())
	return aead.Seal(nonce, nonce, plaintext, ad), nil
}

func open(key, ad, sealed []byte) ([]byte, error) {
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	if len(sealed) < aead.NonceSize() {
		return nil, errors.New("sealed value too short")
	}
	return aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], ad)
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return b
}

func newToken() string { return base64.RawURLEncoding.EncodeToString(randBytes(32)) }

func tokenHash(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

func newID() string {
	b := randBytes(16)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// wipe overwrites key material that is no longer needed.
func wipe(b []byte) { crypto.Wipe(b) }

// writeFileAtomic writes a 0600 file by write-temp, fsync, rename, fsync dir.
func writeFileAtomic(path string, data []byte) error { return atomicfile.Write(path, data, 0o600) }

// loadOrCreateCA returns the CA certificate and key, creating them on first start.
func loadOrCreateCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPath, keyPath := filepath.Join(dir, fileCA), filepath.Join(dir, fileCAKey)
	certPEM, err1 := os.ReadFile(certPath)
	keyPEM, err2 := os.ReadFile(keyPath)
	if err1 == nil && err2 == nil {
		cb, _ := pem.Decode(certPEM)
		kb, _ := pem.Decode(keyPEM)
		if cb == nil || kb == nil {
			return nil, nil, fmt.Errorf("%s or %s is not PEM", certPath, keyPath)
		}
		cert, err := x509.ParseCertificate(cb.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", certPath, err)
		}
		k, err := x509.ParseECPrivateKey(kb.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
		}
		return cert, k, nil
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          new(big.Int).SetBytes(randBytes(16)),
		Subject:               pkix.Name{CommonName: "hostcrypt keystore CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, nil, err
	}
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})); err != nil {
		return nil, nil, err
	}
	if err := writeFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})); err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, k, err
}

// issueServerCert signs a fresh server certificate for the listen host on
// every start, so a changed --listen never meets a stale certificate.
func issueServerCert(dir string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, host string) (tls.Certificate, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: new(big.Int).SetBytes(randBytes(16)),
		Subject:      pkix.Name{CommonName: "hostcrypt keystore"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(2, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
	} else if host != "" && host != "localhost" {
		tmpl.DNSNames = append(tmpl.DNSNames, host)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return tls.Certificate{}, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	if err := writeFileAtomic(filepath.Join(dir, fileServerKey), keyPEM); err != nil {
		return tls.Certificate{}, err
	}
	if err := writeFileAtomic(filepath.Join(dir, fileServerCert), certPEM); err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}
