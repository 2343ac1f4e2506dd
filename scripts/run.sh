#!/usr/bin/env bash
# The main job: starts keystored and hostcryptd on directories under ./var
# (or $VAR), creates a demo VM with an OS disk, a data disk and a temp disk,
# prints where its images are and how to point the CLI at the daemons, and
# runs until it is interrupted, then shuts both daemons down cleanly,
# hostcryptd first.
#
# The daemons run in sessions of their own, so that Ctrl-C reaches only this
# script, which stops them in order. Each is started with a lifeline: the
# kernel sends it SIGTERM when this script dies (PR_SET_PDEATHSIG, set by
# setpriv), so that even a SIGKILL of this script leaves no daemon and no
# mount behind. Neither depends on a terminal: they read /dev/null and write
# only to their logs, and the stop path ignores SIGPIPE and write errors.
#
# Environment: VAR (default ./var), KEYSTORE_LISTEN (default 127.0.0.1:8443,
# or the port of the previous run, or any free one when 8443 is taken),
# BIN (default ./bin), WEB (the web console's address, e.g. 127.0.0.1:8080;
# none by default), WEB_DEMO_PLAINTEXT (non-empty: the console's block view
# shows what the guest reads too).
set -euo pipefail
cd "$(dirname "$0")/.."
VAR=${VAR:-$PWD/var}
BIN=${BIN:-$PWD/bin}
mkdir -p "$VAR"
chmod 700 "$VAR"
VAR=$(cd "$VAR" && pwd)

# say prints a line and never fails: nobody may be reading any more.
say() { printf '%s\n' "$*" 2>/dev/null || true; }

ks_pid="" host_pid=""
# stop ends both daemons, hostcryptd first (it flushes every disk and
# unmounts), whatever happened to this script's output.
stop() {
  trap '' PIPE INT TERM HUP
  trap - EXIT
  if [[ -n $host_pid ]] && kill -0 "$host_pid" 2>/dev/null; then
    say "run: stopping hostcryptd (flushing every disk)"
    kill -TERM "$host_pid" 2>/dev/null || true
    wait "$host_pid" 2>/dev/null || true
    say "run: hostcryptd stopped"
  fi
  if [[ -n $ks_pid ]] && kill -0 "$ks_pid" 2>/dev/null; then
    say "run: stopping keystored"
    kill -TERM "$ks_pid" 2>/dev/null || true
    wait "$ks_pid" 2>/dev/null || true
    say "run: keystored stopped"
  fi
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# start runs a daemon in its own session with its lifeline, its output
# appended to its log.
start() { # log, command...
  local log=$1
  shift
  setsid setpriv --pdeathsig TERM -- "$@" </dev/null >>"$log" 2>&1 &
}

# wait_for waits until a test passes; if the daemon exits first, it prints
# the daemon's own last words from this run's part of its log.
wait_for() { # seconds, pid, name, log, log offset, test command...
  local n=$(($1 * 10)) pid=$2 name=$3 log=$4 off=$5
  shift 5
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      local status=0 last
      wait "$pid" || status=$?
      last=$(tail -c +$((off + 1)) "$log" | grep -v '^[[:space:]]*$' | tail -n 1)
      say "run: $name exited during start-up (status $status): ${last:-no message}" >&2
      if [[ $last == *"address already in use"* ]]; then
        say "run: the key store's address $LISTEN is taken; free it, or run with KEYSTORE_LISTEN=127.0.0.1:PORT (the key store keeps that port: its key ids name it)" >&2
      fi
      say "run: log: $log" >&2
      exit 1
    fi
    ((n--)) || { say "run: timed out waiting for $name (log: $log)" >&2; exit 1; }
    sleep 0.1
  done
}

size_of() { stat -c %s "$1" 2>/dev/null || echo 0; }
port_in_use() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# The key store's address: KEYSTORE_LISTEN, else the previous run's (key ids,
# and with them every disk's wrapped key, name it), else 8443 when free,
# else a free port that later runs keep.
prev=""
if [[ -s $VAR/keystore/address ]]; then
  prev=$(sed -e 's|^https://||' "$VAR/keystore/address")
fi
LISTEN=${KEYSTORE_LISTEN:-}
if [[ -n $prev && (-z $LISTEN || $LISTEN == *:0) ]]; then
  LISTEN=$prev
elif [[ -z $LISTEN ]]; then
  LISTEN=127.0.0.1:8443
  if port_in_use 127.0.0.1 8443; then
    say "run: port 8443 is taken; keystored listens on a free port instead (KEYSTORE_LISTEN=HOST:PORT chooses one)"
    LISTEN=127.0.0.1:0
  fi
fi

rm -f "$VAR/keystore/address"
ks_log=$VAR/keystored.log
ks_off=$(size_of "$ks_log")
start "$ks_log" "$BIN/keystored" --dir "$VAR/keystore" --listen "$LISTEN"
ks_pid=$!
wait_for 20 "$ks_pid" keystored "$ks_log" "$ks_off" test -s "$VAR/keystore/address"
url=$(cat "$VAR/keystore/address")
[[ $url == https://* ]] || url="https://$url"

host_log=$VAR/hostcryptd.log
host_off=$(size_of "$host_log")
# The web console, when WEB names its address.
web=()
[[ -z ${WEB:-} ]] || web=(--web "$WEB")
[[ -z ${WEB:-} || -z ${WEB_DEMO_PLAINTEXT:-} ]] || web+=(--web-demo-plaintext)
start "$host_log" "$BIN/hostcryptd" --state "$VAR/state" --storage "$VAR/storage" --host-dir "$VAR/host" \
  --mount "$VAR/mnt" --keystore "$url" --keystore-ca "$VAR/keystore/ca.pem" \
  --token-file "$VAR/keystore/platform.token" "${web[@]}"
host_pid=$!
# From here on a reader that goes away makes a write fail (and this script
# stop cleanly) instead of killing it.
trap '' PIPE

export HOSTCRYPT_SOCKET=$VAR/state/hostcryptd.sock
export HOSTCRYPT_KEYSTORE=$url
export HOSTCRYPT_KEYSTORE_CA=$VAR/keystore/ca.pem
export HOSTCRYPT_TOKEN_FILE=$VAR/keystore/admin.token
hc() { "$BIN/hostcrypt" "$@"; }
wait_for 30 "$host_pid" hostcryptd "$host_log" "$host_off" hc vm list

if ! hc vm show --name demo >/dev/null 2>&1; then
  hc disk create --name demo-data --size 1G >/dev/null
  hc vm create --name demo --os-disk-size 2G --data-disks demo-data --temp-disk-size 1G >/dev/null
fi
hc vm show --name demo
echo
echo "What is encrypted where (hostcrypt vm encryption-report --name demo):"
hc vm encryption-report --name demo

cat <<MSG

keystored listens on $url; hostcryptd serves the demo VM's disks, encrypted
on their way to $VAR/storage:
$(ls -l "$VAR/mnt/demo" | tail -n +2)

Point the CLI at these daemons in another shell with:
export HOSTCRYPT_SOCKET=$HOSTCRYPT_SOCKET HOSTCRYPT_KEYSTORE=$HOSTCRYPT_KEYSTORE HOSTCRYPT_KEYSTORE_CA=$HOSTCRYPT_KEYSTORE_CA HOSTCRYPT_TOKEN_FILE=$HOSTCRYPT_TOKEN_FILE PATH=$BIN:\$PATH

Try: losetup --find --show $VAR/mnt/demo/data-0.img   (then mkfs.ext4 and mount it)
     hostcrypt vm stop --name demo    # the images disappear
     hostcrypt snapshot create --name snap1 --source demo-data   # while it runs
Logs: $ks_log, $host_log. Ctrl-C stops both daemons cleanly.
MSG
if [[ -n ${WEB:-} ]]; then
  # The address as bound (WEB may say port 0), from this run's log.
  web_url=$(tail -c +$((host_off + 1)) "$host_log" | sed -n 's/.*web console listening" url=\([^ ]*\).*/\1/p' | tail -n 1)
  say "The web console: open ${web_url}login?token=\$(cat $VAR/state/console.token)"
fi
status=0
wait "$host_pid" || status=$?
host_pid=""
say "run: hostcryptd exited by itself (status $status); see $host_log" >&2
exit 1
