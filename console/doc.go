// Package console is hostcryptd's web console: one page, served on a
// listener of its own (hostcryptd --web ADDR), that shows a demonstration
// audience what the host does — the VMs, their disks and each disk's
// encryption layers, the key vaults and keys, the disk encryption sets, the
// event timeline as it happens, per-disk rates, and one stored block beside
// what the guest reads — and lets an operator run the demo's steps.
//
// What it reads and how:
//   - the control plane through the control API's types (Control, which
//     *api.Client satisfies). A background loop reads it every
//     RefreshInterval while a page watches (every IdleInterval otherwise),
//     and a page load answers from the last reading, so a page never waits
//     behind a copy, the control lock or a key store call; the disk
//     encryption sets, whose listing checks each set's key access with the
//     key store, are read by a loop of their own, only while a page
//     watches.
//   - the keys from the key store's event stream, read with the platform's
//     token hostcryptd already has (KeyStore): versions created, enabled,
//     disabled, near expiry, expired, deleted, recovered, purged. The
//     platform may read every vault's metadata but no customer key, so an
//     expiry changed without one of these events shows at the next event
//     about the key.
//   - rates from Rates, when hostcryptd wires one; blocks from Blocks.
//
// Its security (docs/SECURITY.md has the reasoning):
//   - a credential of its own, STATE/console.token, written at each start;
//     /login?token=… exchanges it for a session cookie (HttpOnly,
//     SameSite=Strict) and redirects to a URL without it. Every other
//     request, reads and static files included, needs that cookie.
//   - a Host-header allowlist against DNS rebinding, an Origin check on
//     every state-changing request, and a Content-Security-Policy that
//     allows the console's own files only (no inline script) and no
//     framing.
//   - key store rights the host must not keep (disabling or rotating a
//     customer key) are the operator's: the page sends the operator's key
//     store token with that one request, the console passes it to keystored
//     as the bearer token, so keystored's audit names the operator, and
//     keeps it nowhere.
//   - no answer carries key material or a token; guest data only in the
//     plaintext side of the block view, which needs Config.DemoPlaintext and
//     a running VM, and every use of it is logged and put on the timeline.
package console
