#!/usr/bin/env bash
# The main job: starts keystored and hostcryptd on directories under ./var
# (or $VAR), creates a demo VM with an OS disk, a data disk and a temp disk,
# prints where its images are and how to point the CLI at the daemons, and
# runs until Ctrl-C, then shuts both daemons down cleanly, hostcryptd first
# (the daemons run in sessions of their own so that Ctrl-C reaches only this
# script, which stops them in order).
set -euo pipefail
cd "$(dirname "$0")/.."
VAR=${VAR:-$PWD/var}
LISTEN=${KEYSTORE_LISTEN:-127.0.0.1:8443}
BIN=$PWD/bin
mkdir -p "$VAR"
chmod 700 "$VAR"

ks_pid="" host_pid=""
stop() {
  trap - INT TERM EXIT
  if [[ -n $host_pid ]] && kill -0 "$host_pid" 2>/dev/null; then
    echo "run: stopping hostcryptd (flushing every disk)"
    kill -TERM "$host_pid"; wait "$host_pid" || true
  fi
  if [[ -n $ks_pid ]] && kill -0 "$ks_pid" 2>/dev/null; then
    echo "run: stopping keystored"
    kill -TERM "$ks_pid"; wait "$ks_pid" || true
  fi
}
trap stop INT TERM EXIT

wait_for() { # seconds, description, test command...
  local n=$(($1 * 10)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    ((n--)) || { echo "run: timed out waiting for $what" >&2; exit 1; }
    sleep 0.1
  done
}

rm -f "$VAR/keystore/address"
setsid "$BIN/keystored" --dir "$VAR/keystore" --listen "$LISTEN" 2>>"$VAR/keystored.log" &
ks_pid=$!
wait_for 20 "keystored (log: $VAR/keystored.log)" test -s "$VAR/keystore/address"
url=$(cat "$VAR/keystore/address")
[[ $url == https://* ]] || url="https://$url"

setsid "$BIN/hostcryptd" --state "$VAR/state" --storage "$VAR/storage" --host-dir "$VAR/host" \
  --mount "$VAR/mnt" --keystore "$url" --keystore-ca "$VAR/keystore/ca.pem" \
  --token-file "$VAR/keystore/platform.token" 2>>"$VAR/hostcryptd.log" &
host_pid=$!

export HOSTCRYPT_SOCKET=$VAR/state/hostcryptd.sock
export HOSTCRYPT_KEYSTORE=$url
export HOSTCRYPT_KEYSTORE_CA=$VAR/keystore/ca.pem
export HOSTCRYPT_TOKEN_FILE=$VAR/keystore/admin.token
hc() { "$BIN/hostcrypt" "$@"; }
wait_for 30 "hostcryptd (log: $VAR/hostcryptd.log)" hc vm list

if ! hc vm show --name demo >/dev/null 2>&1; then
  hc disk create --name demo-data --size 1G >/dev/null
  hc vm create --name demo --os-disk-size 2G --data-disks demo-data --temp-disk-size 1G >/dev/null
fi
hc vm show --name demo
echo
echo "What is encrypted where (hostcrypt vm encryption-report --name demo):"
hc vm encryption-report --name demo

cat <<MSG

The demo VM's disks, encrypted on their way to $VAR/storage:
$(ls -l "$VAR/mnt/demo" | tail -n +2)

Point the CLI at these daemons in another shell with:
export HOSTCRYPT_SOCKET=$HOSTCRYPT_SOCKET HOSTCRYPT_KEYSTORE=$HOSTCRYPT_KEYSTORE HOSTCRYPT_KEYSTORE_CA=$HOSTCRYPT_KEYSTORE_CA HOSTCRYPT_TOKEN_FILE=$HOSTCRYPT_TOKEN_FILE PATH=$BIN:\$PATH

Try: losetup --find --show $VAR/mnt/demo/data-0.img   (then mkfs.ext4 and mount it)
     hostcrypt vm stop --name demo    # the images disappear
     hostcrypt snapshot create --name snap1 --source demo-data   # while it runs
Logs: $VAR/keystored.log, $VAR/hostcryptd.log. Ctrl-C stops both daemons cleanly.
MSG
wait "$host_pid"
