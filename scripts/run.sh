#!/usr/bin/env bash
# The main job. The daemons (keystored, hostcryptd) are not in this tree yet,
# so this runs the disk engine's self-check: write, reopen with the key
# unwrapped again, tamper detection, and a scan of the backing store for
# plaintext.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "hostcrypt: engine self-check (the daemons are not part of this build yet)"
go test -count=1 -run 'TestReopenAfterSync|TestTamper|TestNoPlaintextAtRest|TestWrongKey' -v ./disk/ |
  grep -E '^(--- |ok|FAIL|PASS)'
