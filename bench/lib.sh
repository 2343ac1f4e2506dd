# bench/lib.sh — what the single-host benchmarks share: start keystored and
# hostcryptd on fresh directories under BENCH_TMPDIR, a CLI bound to them,
# and a cleanup that stops both and removes everything. Source it; it sets
# WORK, DAEMON (hostcryptd's PID) and defines hc.

BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
GO=${GO:-go}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

say() { printf '[%s %s] %s\n' "${BENCH_NAME:-bench}" "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (FUSE mount)"
for c in fio python3 fusermount3; do
  command -v "$c" >/dev/null || die "$c is missing (scripts/deps.sh installs it)"
done

WORK=$(mktemp -d "$BENCH_TMPDIR/hostcrypt-${BENCH_NAME:-bench}.XXXXXX")
PIDS=()
cleanup() {
  local rc=$? pid i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  mountpoint -q "$WORK/mnt" 2>/dev/null && fusermount3 -u -z "$WORK/mnt"
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT INT TERM

# start_daemons [HOSTCRYPTD FLAGS...]: builds, starts keystored and hostcryptd.
start_daemons() {
  say "building"
  make --no-print-directory build GO="$GO" >/dev/null
  cp bin/keystored bin/hostcryptd bin/hostcrypt "$WORK/"
  mkdir -p "$WORK/ks" "$WORK/state" "$WORK/storage" "$WORK/host" "$WORK/mnt"
  "$WORK/keystored" --dir "$WORK/ks" --listen 127.0.0.1:0 >"$WORK/keystored.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 300); do [[ -s $WORK/ks/address && -s $WORK/ks/platform.token ]] && break; sleep 0.1; done
  local url
  url=$(cat "$WORK/ks/address")
  [[ $url == https://* ]] || url=https://$url
  "$WORK/hostcryptd" --state "$WORK/state" --storage "$WORK/storage" --host-dir "$WORK/host" \
    --mount "$WORK/mnt" --keystore "$url" --keystore-ca "$WORK/ks/ca.pem" \
    --token-file "$WORK/ks/platform.token" "$@" >"$WORK/hostcryptd.log" 2>&1 &
  DAEMON=$!
  PIDS+=("$DAEMON")
  for _ in $(seq 300); do [[ -S $WORK/state/hostcryptd.sock ]] && mountpoint -q "$WORK/mnt" && break; sleep 0.1; done
  mountpoint -q "$WORK/mnt" || die "hostcryptd did not start: $(tail -n 3 "$WORK/hostcryptd.log")"
}

hc() { "$WORK/hostcrypt" --host-socket "$WORK/state/hostcryptd.sock" "$@"; }

# kib_of PID FIELD: a /proc/PID/status field in KiB (VmHWM, VmRSS).
kib_of() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# update_docs NAME TABLE: replaces what stands between <!-- NAME:start -->
# and <!-- NAME:end --> in docs/PERFORMANCE.md with the file TABLE.
update_docs() {
  python3 - "$1" "$2" docs/PERFORMANCE.md <<'PY'
import sys
name, table, path = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]
doc = open(path).read()
start, end = "<!-- %s:start -->" % name, "<!-- %s:end -->" % name
if start not in doc or end not in doc:
    sys.exit("no %s markers in %s" % (name, path))
head, rest = doc.split(start, 1)
_, tail = rest.split(end, 1)
open(path, "w").write(head + start + "\n" + table + end + tail)
PY
  say "table written into docs/PERFORMANCE.md"
}
