package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Webhook destinations are the operator's choice, not an administrator's:
// a key store usually runs beside services (a cloud's metadata endpoint,
// the host's own daemons) that must not be reachable by pointing a webhook
// at them. keystored --webhook-allow lists what may be called; nothing is
// allowed without it.
//
// An entry is one of
//
//	host[:port]                    https to host, port 443 unless given, any path
//	https://host[:port]/prefix     https URLs under the path prefix
//	http://host[:port]/prefix      plain http, only when the entry says so
//
// host is a DNS name or an IP literal ([::1] for IPv6). Whatever the URL
// says, the address the connection is actually made to is checked when it
// is dialled (so a name that resolves somewhere else later is caught):
// link-local, unspecified, multicast and known metadata addresses are
// refused unless the entry names that very address as an IP literal, and
// loopback is refused unless the entry names a loopback address or
// localhost. Redirects are never followed.
type allowEntry struct {
	raw    string
	scheme string     // "https" or "http"
	host   string     // lower case, without brackets
	port   uint16     // explicit or the scheme's default
	prefix string     // path prefix; "" allows any path
	ip     netip.Addr // set when host is an IP literal
}

// maxWebhookURL bounds a webhook URL; it is stored and shown in listings.
const maxWebhookURL = 2048

func parseWebhookAllow(entries []string) ([]allowEntry, error) {
	var out []allowEntry
	for _, raw := range entries {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		e, err := parseAllowEntry(raw)
		if err != nil {
			return nil, fmt.Errorf("--webhook-allow %q: %w", raw, err)
		}
		out = append(out, e)
	}
	return out, nil
}

func parseAllowEntry(raw string) (allowEntry, error) {
	e := allowEntry{raw: raw, scheme: "https"}
	hostport := raw
	if strings.Contains(raw, "://") {
		u, err := url.Parse(raw)
		if err != nil {
			return e, err
		}
		if u.Scheme != "https" && u.Scheme != "http" {
			return e, errors.New("the scheme must be https or http")
		}
		if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			return e, errors.New("an entry is scheme://host[:port]/path-prefix, without user, query or fragment")
		}
		p, ok := cleanPath(u)
		if !ok {
			return e, errors.New("the path prefix must be a clean path (no . or .. segments, no encoded slashes)")
		}
		e.scheme, hostport, e.prefix = u.Scheme, u.Host, p
	} else if strings.ContainsAny(raw, "/?#@") {
		return e, errors.New("write host[:port], or a URL prefix such as https://host:port/path/")
	}
	host, port, err := splitHostPort(hostport, e.scheme)
	if err != nil {
		return e, err
	}
	e.host, e.port = host, port
	if ip, err := netip.ParseAddr(host); err == nil {
		e.ip = ip.Unmap()
	}
	return e, nil
}

// splitHostPort splits host[:port] (IPv6 in brackets) and supplies the
// scheme's default port.
func splitHostPort(hostport, scheme string) (string, uint16, error) {
	u := &url.URL{Host: hostport}
	host, portStr := strings.ToLower(u.Hostname()), u.Port()
	if host == "" || strings.ContainsAny(host, " /\\@") {
		return "", 0, errors.New("a host name or IP address is required")
	}
	if portStr == "" {
		if strings.HasSuffix(hostport, ":") {
			return "", 0, errors.New("the port is empty")
		}
		if scheme == "http" {
			return host, 80, nil
		}
		return host, 443, nil
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 || strconv.FormatUint(port, 10) != portStr {
		return "", 0, fmt.Errorf("port %q is not a number from 1 to 65535", portStr)
	}
	return host, uint16(port), nil
}

// cleanPath returns u's path if it has no dot segments or encoded
// slashes or dots, which could make a prefix match a path it does not
// name; "" stands for "/".
func cleanPath(u *url.URL) (string, bool) {
	p := u.Path
	if p == "" {
		p = "/"
	}
	esc := strings.ToLower(u.EscapedPath())
	if strings.Contains(esc, "%2f") || strings.Contains(esc, "%2e") || strings.Contains(esc, "%5c") || strings.Contains(p, "\\") {
		return "", false
	}
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	if c != p || !strings.HasPrefix(p, "/") {
		return "", false
	}
	return p, true
}

func (e *allowEntry) allowsPath(p string) bool {
	switch {
	case e.prefix == "" || e.prefix == "/":
		return true
	case strings.HasSuffix(e.prefix, "/"):
		return strings.HasPrefix(p, e.prefix)
	}
	return p == e.prefix || strings.HasPrefix(p, e.prefix+"/")
}

// webhookEntry returns the allow entry that lets a webhook call rawURL,
// or a 400 saying why none does.
func (s *Server) webhookEntry(rawURL string) (*allowEntry, error) {
	if len(rawURL) > maxWebhookURL {
		return nil, badParam("webhook url is %d bytes long; at most %d are accepted", len(rawURL), maxWebhookURL)
	}
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, badParam("webhook url %q is not an https URL", rawURL)
	}
	if u.User != nil || u.Fragment != "" {
		return nil, badParam("webhook url %q has a user or a fragment; neither is sent, leave them out", rawURL)
	}
	p, ok := cleanPath(u)
	if !ok {
		return nil, badParam("webhook url %q has dot segments or encoded slashes in its path; write the path plainly", rawURL)
	}
	host, port, err := splitHostPort(u.Host, u.Scheme)
	if err != nil {
		return nil, badParam("webhook url %q: %v", rawURL, err)
	}
	httpsOnly := false
	for i := range s.webhookAllow {
		e := &s.webhookAllow[i]
		if e.host != host || !e.allowsPath(p) {
			continue
		}
		if e.scheme == u.Scheme && e.port == port {
			return e, nil
		}
		// The same destination over https is allowed: say how http would be.
		httpsOnly = httpsOnly || (u.Scheme == "http" && e.scheme == "https" && (e.port == port || u.Port() == ""))
	}
	if httpsOnly {
		return nil, badParam("webhook url %q is plain http; the key store's operator allows this destination over https only (an http destination needs an entry written http://HOST:PORT/ in keystored --webhook-allow)", rawURL)
	}
	if len(s.webhookAllow) == 0 {
		return nil, badParam("this key store allows no webhook destinations; its operator lists them with keystored --webhook-allow")
	}
	var list []string
	for _, e := range s.webhookAllow {
		list = append(list, e.raw)
	}
	return nil, badParam("webhook url %q is not a destination the key store's operator allows (keystored --webhook-allow): %s", rawURL, strings.Join(list, ", "))
}

// Addresses a webhook never reaches through a name: cloud metadata
// services that are not link-local (AWS IPv6, Alibaba) and NAT64's prefix
// is looked through (64:ff9b::a9fe:a9fe is 169.254.169.254).
var (
	metadataAddrs = []netip.Addr{netip.MustParseAddr("fd00:ec2::254"), netip.MustParseAddr("100.100.100.200")}
	nat64Prefix   = netip.MustParsePrefix("64:ff9b::/96")
)

// checkDial decides whether a webhook allowed by e may connect to address
// (IP:port), the address being dialled after name resolution.
func (e *allowEntry) checkDial(address string) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("webhook dial to %q: not an IP address and port", address)
	}
	ip := ap.Addr().WithZone("").Unmap()
	if ap.Port() != e.port {
		return fmt.Errorf("webhook dial to %s refused: the allowed port is %d", address, e.port)
	}
	if e.ip.IsValid() {
		// An entry naming an address allows exactly that address, of any kind.
		if ip != e.ip {
			return fmt.Errorf("webhook dial to %s refused: the entry allows %s only", address, e.ip)
		}
		return nil
	}
	if ip.Is6() && nat64Prefix.Contains(ip) {
		b := ip.As16()
		ip = netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	}
	switch {
	case ip.IsUnspecified() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsMulticast() || ip.IsInterfaceLocalMulticast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("webhook dial to %s refused: %s resolves to a link-local, unspecified or multicast address (allow it only by naming the address itself in --webhook-allow)", address, e.host)
	case ip.IsLoopback() && e.host != "localhost":
		return fmt.Errorf("webhook dial to %s refused: %s resolves to a loopback address (name the address or localhost in --webhook-allow to allow it)", address, e.host)
	}
	for _, m := range metadataAddrs {
		if ip == m {
			return fmt.Errorf("webhook dial to %s refused: a cloud metadata address (allow it only by naming the address itself in --webhook-allow)", address)
		}
	}
	return nil
}

// webhookClient is the HTTP client of one webhook: no proxy (a proxy would
// be dialled instead of the destination), every connection's address
// checked by checkDial, no redirects followed.
func (s *Server) webhookClient(e *allowEntry) *http.Client {
	d := &net.Dialer{
		Timeout: 10 * time.Second,
		Control: func(_, address string, _ syscall.RawConn) error { return e.checkDial(address) },
	}
	lookup := s.webhookLookup
	if lookup == nil {
		lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		var ips []netip.Addr
		if ip, err := netip.ParseAddr(host); err == nil {
			ips = []netip.Addr{ip}
		} else if ips, err = lookup(ctx, host); err != nil {
			return nil, err
		}
		errs := []error{fmt.Errorf("%s has no address", host)}
		for _, ip := range ips {
			c, err := d.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
			if err == nil {
				return c, nil
			}
			errs = append(errs, err)
		}
		return nil, errors.Join(errs[1:]...)
	}
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           dial,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: s.cfg.WebhookRootCAs},
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 10 * time.Second,
		MaxIdleConnsPerHost:   1,
		IdleConnTimeout:       90 * time.Second,
	}
	return &http.Client{
		Transport:     tr,
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
