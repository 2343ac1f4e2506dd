#!/usr/bin/env bash
# ceph-cluster.sh — a throw-away single-node Ceph cluster for hostcrypt's RADOS
# backend: one monitor and one BlueStore OSD on a sparse file, cephx on, no
# systemd, nothing outside DIR (configuration, keys, daemon data, logs, pid
# files, admin sockets).
#
#   scripts/ceph-cluster.sh start DIR        create the cluster in DIR (an empty or
#                                            missing directory), or restart the one
#                                            there; wait until an object can be written
#                                            and read back; print the environment
#   scripts/ceph-cluster.sh env DIR          print the environment again
#   scripts/ceph-cluster.sh status DIR       the cluster's state (ceph -s)
#   scripts/ceph-cluster.sh stop DIR         stop the daemons started from DIR
#   scripts/ceph-cluster.sh destroy DIR      stop them and remove DIR
#   scripts/ceph-cluster.sh with DIR CMD...  start, run CMD with the environment
#                                            exported, destroy; exits with CMD's status
#
# The environment printed (eval it, or use `with`):
#   CEPH_CONF            the cluster's ceph.conf (the ceph and rados tools read it too)
#   HOSTCRYPT_CEPH_POOL  the pool, HOSTCRYPT_CEPH_USER the cephx user for hostcrypt
#   HOSTCRYPT_RADOS      the same as a storage location: hostcryptd --storage "$HOSTCRYPT_RADOS"
#
# Settings read when the cluster is created:
#   HOSTCRYPT_CEPH_POOL=hostcrypt   HOSTCRYPT_CEPH_BLOCK=16G (sparse; a full OSD
#   blocks writes instead of failing them, so keep it large)
#   HOSTCRYPT_CEPH_WAIT=120 (seconds to wait for the cluster to serve I/O)
#
# stop and destroy signal only the pids in DIR/run/*.pid whose command line
# names DIR's ceph.conf. The packages come from `scripts/deps.sh ceph`.
set -euo pipefail

usage() {
  sed -n '/^#   scripts/p' "$0" | sed 's/^#  //' >&2
  exit 2
}

(($# >= 2)) || usage
verb=$1 dir=$2
shift 2
case $verb in start | env | status | stop | destroy | with) ;; *) usage ;; esac
[[ $verb == with ]] && (($# == 0)) && usage
[[ $verb == start || $verb == with ]] && mkdir -p "$dir"
[[ -d $dir ]] || { echo "ceph-cluster: $dir: no such directory" >&2; exit 1; }
dir=$(cd "$dir" && pwd)
conf=$dir/ceph.conf
user=hostcrypt
wait_s=${HOSTCRYPT_CEPH_WAIT:-120}

say() { printf 'ceph-cluster: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
# Every client call is bounded: without a manager some commands never return.
ceph_() { timeout 30 ceph --conf "$conf" --connect-timeout 20 "$@"; }

# ---- daemons, by pid file -------------------------------------------------------
daemons=(osd.0 mon.a) # stop order; start order is the reverse

# ours NAME prints the pid of daemon NAME if it runs with this directory's conf.
ours() {
  local f=$dir/run/$1.pid pid
  [[ -s $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' '\n' </proc/"$pid"/cmdline | grep -qxF -- "$conf" || return 1
  echo "$pid"
}

stop_one() {
  local pid i
  if ! pid=$(ours "$1"); then
    rm -f "$dir/run/$1.pid"
    return 0
  fi
  say "stopping $1 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    [[ -d /proc/$pid ]] || break
    sleep 0.1
  done
  if [[ -d /proc/$pid ]]; then
    say "$1 (pid $pid) is still running after 15s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
  fi
  rm -f "$dir/run/$1.pid"
}

stop_all() {
  [[ -f $conf ]] || return 0
  local d
  for d in "${daemons[@]}"; do stop_one "$d"; done
}

marker="# A throw-away single-node cluster made by hostcrypt's scripts/ceph-cluster.sh."

# remove_dir removes DIR if it is empty or holds a cluster of this script's.
remove_dir() {
  if [[ -z $(ls -A "$dir") ]] || { [[ -f $conf ]] && [[ $(head -n 1 "$conf") == "$marker" ]]; }; then
    rm -rf -- "$dir"
  else
    say "$dir holds no cluster of this script's: left as it is"
  fi
}

# ---- creation -------------------------------------------------------------------
# free_port prints a loopback TCP port nobody listens on.
free_port() {
  local p i
  for ((i = 0; i < 100; i++)); do
    p=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  die "no free port found on 127.0.0.1"
}

write_conf() {
  local fsid=$1 port=$2 block=$3
  cat >"$conf" <<EOF
$marker
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$port
ms bind msgr1 = false
public addr = 127.0.0.1
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
run dir = $dir/run
crash dir = $dir/crash
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
# One OSD: one copy of everything, placement across OSDs, not hosts.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
# The monitor stops below mon_data_avail_crit percent free on its disk.
mon data avail warn = 2
mon data avail crit = 1

[client]
keyring = $dir/keyring
log file = /dev/null

[mon]
mon data = $dir/mon
mon cluster log file = $dir/log/cluster.log
mon memory target = 268435456

[osd]
osd data = $dir/osd
keyring = $dir/osd/keyring
osd objectstore = bluestore
# The block file lives outside osd data: BlueStore links osd_data/block to it.
bluestore block path = $dir/osd.block
bluestore block create = true
bluestore block size = $block
bluestore fsck on mount = false
# Small and fixed memory: 896 MiB is the lowest osd_memory_target Pacific takes.
bluestore cache autotune = false
bluestore cache size = 134217728
osd memory target = 939524096
osd op num shards = 2
osd op num threads per shard = 2
EOF
}

# keyring NAME FILE CAPS... makes FILE holding a new key for NAME.
keyring() {
  local name=$1 file=$2
  shift 2
  ceph-authtool --create-keyring "$file" --gen-key -n "$name" "$@" >/dev/null
  chmod 600 "$file"
}

start_mon() {
  ours mon.a >/dev/null && return 0
  ceph-mon --conf "$conf" -i a 2>>"$dir/log/startup.log" || die "ceph-mon failed: see $dir/log/mon.a.log"
}

start_osd() {
  ours osd.0 >/dev/null && return 0
  ceph-osd --conf "$conf" -i 0 2>>"$dir/log/startup.log" || die "ceph-osd failed: see $dir/log/osd.0.log"
}

create() {
  local pool=$1 block=${HOSTCRYPT_CEPH_BLOCK:-16G}
  local fsid port uuid secret id
  [[ -z $(ls -A "$dir") ]] || die "$dir holds no cluster and is not empty: give an empty or new directory"
  for c in ceph-mon ceph-osd ceph-authtool monmaptool ceph rados; do
    command -v "$c" >/dev/null || die "$c is missing: install the Ceph packages with scripts/deps.sh ceph"
  done
  fsid=$(</proc/sys/kernel/random/uuid)
  port=$(free_port)
  mkdir -p "$dir"/{bootstrap,mon,osd,run,log,crash}
  say "creating cluster $fsid in $dir (monitor 127.0.0.1:$port, BlueStore on a $block sparse file)"
  write_conf "$fsid" "$port" "$block"

  # Keys: the monitor's own, the admin's and the OSD's. The admin key goes into
  # the monitor's initial keyring, the OSD's is registered by `osd new` below.
  keyring mon. "$dir/bootstrap/mon.keyring" --cap mon 'allow *'
  keyring client.admin "$dir/keyring" --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *'
  keyring osd.0 "$dir/osd/keyring"
  ceph-authtool "$dir/bootstrap/mon.keyring" --import-keyring "$dir/keyring" >/dev/null

  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$dir/bootstrap/monmap" >/dev/null
  ceph-mon --conf "$conf" -i a --mkfs --monmap "$dir/bootstrap/monmap" \
    --keyring "$dir/bootstrap/mon.keyring" 2>>"$dir/log/startup.log" ||
    die "ceph-mon --mkfs failed: see $dir/log/startup.log"
  start_mon

  uuid=$(</proc/sys/kernel/random/uuid)
  secret=$(ceph-authtool -p -n osd.0 "$dir/osd/keyring")
  id=$(printf '{"cephx_secret": "%s"}' "$secret" | ceph_ osd new "$uuid" 0 -i -) ||
    die "registering osd.0 failed (is the monitor up? see $dir/log/mon.a.log)"
  [[ $id == 0 ]] || die "the monitor gave OSD id '$id', not 0"
  ceph-osd --conf "$conf" -i 0 --mkfs --osd-uuid "$uuid" >>"$dir/log/startup.log" 2>&1 ||
    die "ceph-osd --mkfs failed: see $dir/log/startup.log and $dir/log/osd.0.log"
  start_osd

  ceph_ osd pool create "$pool" >/dev/null 2>&1 || die "creating pool $pool failed"
  ceph_ osd pool application enable "$pool" rados >/dev/null 2>&1 || die "tagging pool $pool failed"
  # hostcrypt's own user: read and write in its pool, and what an RBD client may
  # do on the monitor (blocklisting a dead writer among it).
  ceph_ auth get-or-create "client.$user" mon 'profile rbd' osd "profile rbd pool=$pool" \
    >>"$dir/keyring" || die "creating client.$user failed"
  echo "$pool" >"$dir/pool"
}

# ready waits until an object written through the pool reads back.
ready() {
  local pool=$1 t0=$SECONDS obj=ceph-cluster-probe got
  while :; do
    if echo ok | timeout 15 rados --conf "$conf" -p "$pool" -N ceph-cluster put "$obj" - 2>/dev/null &&
      got=$(timeout 15 rados --conf "$conf" -p "$pool" -N ceph-cluster get "$obj" - 2>/dev/null) &&
      [[ $got == ok ]]; then
      break
    fi
    ((SECONDS - t0 < wait_s)) ||
      die "pool $pool serves no I/O after ${wait_s}s: see $dir/log/osd.0.log and $dir/log/mon.a.log"
    sleep 0.5
  done
  timeout 15 rados --conf "$conf" -p "$pool" -N ceph-cluster rm "$obj" 2>/dev/null || true
}

print_env() {
  local pool
  [[ -s $dir/pool ]] || die "no cluster in $dir"
  pool=$(<"$dir/pool")
  cat <<EOF
export CEPH_CONF='$conf'
export HOSTCRYPT_CEPH_POOL='$pool'
export HOSTCRYPT_CEPH_USER='$user'
export HOSTCRYPT_RADOS='rados://$pool?conf=$conf&id=$user'
EOF
}

start() {
  local t0=$SECONDS pool
  if [[ -s $dir/pool ]]; then
    pool=$(<"$dir/pool")
    say "restarting the cluster in $dir"
    start_mon
    start_osd
  else
    pool=${HOSTCRYPT_CEPH_POOL:-hostcrypt}
    create "$pool"
  fi
  ready "$pool"
  say "pool $pool serves I/O, $((SECONDS - t0))s after start"
  print_env
}

case $verb in
start) start ;;
env) print_env ;;
status) ceph_ -s ;;
stop) stop_all ;;
destroy)
  stop_all
  remove_dir
  ;;
with)
  # The command runs in the background so that a TERM or INT (a timeout, a
  # Ctrl-C) reaches the trap at once: it ends the command, then the cluster.
  child=
  cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $child ]] && kill -0 "$child" 2>/dev/null; then
      kill -TERM "$child" 2>/dev/null || true
      wait "$child" 2>/dev/null || true
    fi
    stop_all
    remove_dir
    exit "$rc"
  }
  trap cleanup EXIT
  trap 'say "interrupted"; exit 130' INT
  trap 'say "terminated"; exit 143' TERM
  env_lines=$(start) || exit 1
  eval "$env_lines"
  "$@" &
  child=$!
  rc=0
  wait "$child" || rc=$?
  child=
  exit "$rc"
  ;;
esac
