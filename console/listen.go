package console

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"path/filepath"

	"hostcrypt/internal/atomicfile"
)

// TokenFile is the login token's file name under the state directory.
const TokenFile = "console.token"

// CheckAddr refuses a listening address that is not loopback, unless the
// console serves TLS or allowRemote says the operator means it: the page
// shows the host's layout and acts on its VMs, and its cookie would cross
// the network in clear. flag names the option in the message.
func CheckAddr(flag, addr string, tls, allowRemote bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q: want HOST:PORT, e.g. 127.0.0.1:8080: %w", flag, addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	if tls || allowRemote {
		return nil
	}
	return fmt.Errorf("%s %q is not a loopback address: serve it with TLS (--web-tls-cert and --web-tls-key) or say --web-allow-remote to serve it in clear", flag, addr)
}

// WriteToken makes a new login token from crypto/rand and writes it to
// STATE/console.token, readable by its owner only. A token of an earlier
// run is replaced, and the sessions it opened end with that run.
func WriteToken(stateDir string) (token, path string, err error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", "", err
	}
	token = hex.EncodeToString(b)
	path = filepath.Join(stateDir, TokenFile)
	if err := atomicfile.Write(path, []byte(token+"\n"), 0o600); err != nil {
		return "", "", fmt.Errorf("writing the console's token: %w", err)
	}
	return token, path, nil
}
