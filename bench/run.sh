#!/usr/bin/env bash
# bench/run.sh — the fio comparison of docs/PERFORMANCE.md, in one run.
#
# Builds the passthrough reference and the daemons, then for each target in
# turn starts it on fresh directories, runs bench/fio-suite.sh against it,
# and stops it again. Writes bench/results/latest.md (and, with UPDATE_DOCS=1,
# the table in docs/PERFORMANCE.md). Run as root on Debian: it installs fio,
# fuse3 and gocryptfs when they are missing.
#
# Every target runs in two states of its disk or file, each with fresh
# directories: "rewritten" (the file written in full twice, so that every
# block has been rewritten once before the first job, then the five jobs
# one after another), and "fresh" (a target started and its file written
# in full once for each job, which then runs first: the writes of a fresh
# disk are its first rewrites).
#
# Environment, all optional:
#   TARGETS       targets in run order (default: all of them, see ALL_TARGETS;
#                 by name only: passthrough-stock, and passthrough-aes and
#                 passthrough-double, the same-durability passthrough paying
#                 one or both ciphers per 4 KiB block)
#   STATES        disk states to run, of "rewritten fresh" (default both)
#   FRESH_TARGETS the targets that also run fresh (default: all of TARGETS)
#   JOBS          the suite's jobs to run (default all five, in their order)
#   RUNTIME       seconds per fio job (default 8)
#   ROUNDS        how many times to run every target (default 1). Each round
#                 runs all TARGETS in order, so a target's rounds are spread
#                 over the run; the table gives each job's median and range,
#                 and ratios as the median of the rounds' ratios
#   SIZE          file and disk size (default 1G)
#   UPDATE_DOCS   1: also write the table into docs/PERFORMANCE.md
#   BENCH_TMPDIR  where the targets' backing directories go (default /var/tmp;
#                 not /tmp, which may be a tmpfs in memory)
#   WAIT_IDLE     passed to the suite: wait for a quiet machine before each job
#   GO            the go command (default: go)
#   HOSTCRYPTD_FLAGS  extra flags for hostcryptd, e.g. "--pprof 127.0.0.1:6061"
#                 to profile a target while its jobs run
#   IOPS_LOG      passed to the suite: log each job's IOPS every IOPS_LOG ms
#                 (JOB_iops.1.log beside its output), to see a job change pace
#   HOSTCRYPTD    the daemon of the local hostcrypt targets (default
#                 bin/hostcryptd): another build, to compare two builds
#   DOC_SECTION   the markers in docs/PERFORMANCE.md that UPDATE_DOCS=1 writes
#                 between (default fio-table; make bench-rados: rados-table)
#
# On a shared store (the targets rbd and rados-*, not run unless named in
# TARGETS; `make bench-rados` names them): a throw-away Ceph cluster
# (scripts/ceph-cluster.sh, BlueStore on a sparse file under the run's
# directory) is started for the run and destroyed at its end, unless
# HOSTCRYPT_RADOS, CEPH_CONF, HOSTCRYPT_CEPH_POOL and HOSTCRYPT_CEPH_USER
# (what the script prints) name one already running. Each target gets an
# image or a namespace of its own in the pool, removed after it. When the
# cluster's OSD answers on this machine (`ceph daemon osd.0`), each job also
# reports the CPU time per I/O of the OSD and the monitor (a cluster of
# scripts/ceph-cluster.sh, whose pid files it finds) and of fio, and the
# RADOS operations and bytes the OSD served per I/O (see bench/fio-suite.sh).
#   RADOS_SIZE    their disk and image size (default 256M: every target
#                 reads it in full, 4 KiB at a time, before its random reads)
#   HOSTCRYPTD_CEPH  the daemon of the rados-* targets (default
#                 bin/hostcryptd-ceph, as make build builds it): another
#                 build, to compare two builds against the same RBD image
#   RADOS_JOBS    their jobs (default the five and 4 KiB random reads and
#                 writes at queue depth 1, rand-read-4k-qd1 rand-write-4k-qd1)
#
# Every mount and process it started is gone when it exits, also after a
# failure or Ctrl-C.
set -euo pipefail

ALL_TARGETS="raw passthrough passthrough-hc passthrough-sync gocryptfs qemu-luks hostcrypt-pmk cmk cmk-double cmk-readonly cmk-readwrite cmk-readwrite-noeah"
# On a Ceph cluster: run when named in TARGETS.
RADOS_TARGETS="rbd rados-none rados-readonly rados-readwrite"
TARGETS=${TARGETS:-$ALL_TARGETS}
STATES=${STATES:-rewritten fresh}
FRESH_TARGETS=${FRESH_TARGETS:-$TARGETS}
# hostcryptd's flush interval (its default): the same-durability
# passthrough fdatasyncs its files as often.
FLUSH_INTERVAL=${FLUSH_INTERVAL:-5s}
ALL_JOBS="seq-write-1M seq-read-1M rand-write-4k rand-read-4k rand-rw-4k"
RUNTIME=${RUNTIME:-8}
ROUNDS=${ROUNDS:-1}
SIZE=${SIZE:-1G}
UPDATE_DOCS=${UPDATE_DOCS:-0}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
GO=${GO:-go}
DOC_SECTION=${DOC_SECTION:-fio-table}
RADOS_SIZE=${RADOS_SIZE:-256M}
RADOS_JOBS=${RADOS_JOBS:-$ALL_JOBS rand-read-4k-qd1 rand-write-4k-qd1}
export RUNTIME

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RESULTS=bench/results
OUT=$RESULTS/latest

say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# --- what this run started, so that cleanup can undo it --------------------

WORK=""
CLUSTER_DIR="" # the Ceph cluster this run started, if any
PIDS=()   # processes to stop, in start order
MOUNTS=() # mount points to make sure are gone

# stop_pid PID [GRACE]: SIGTERM to the process group PID leads (spawn starts
# every process with setsid, as the leader of its own group), SIGKILL after
# GRACE seconds.
stop_pid() {
  local pid=$1 grace=${2:-30} i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "warning: process $pid still running after ${grace} s, killing it"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# Stops everything started since the last call, newest first, and makes sure
# no mount and no loop device of the work directory is left.
stop_all() {
  local i m dev
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    stop_pid "${PIDS[i]}"
  done
  PIDS=()
  for m in "${MOUNTS[@]}"; do
    if mountpoint -q "$m" 2>/dev/null; then
      say "warning: $m still mounted, unmounting it"
      fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "warning: cannot unmount $m"
    fi
  done
  MOUNTS=()
  if [[ -n $WORK ]] && command -v losetup >/dev/null; then
    while read -r dev; do
      [[ -n $dev ]] || continue
      say "warning: detaching $dev left on a file of this run"
      losetup -d "$dev" || true
    done < <(losetup -a 2>/dev/null | grep -F "($WORK/" | cut -d: -f1)
  fi
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_all
  if [[ -n $CLUSTER_DIR ]]; then
    say "destroying the Ceph cluster"
    scripts/ceph-cluster.sh destroy "$CLUSTER_DIR" >/dev/null 2>&1 || say "warning: destroying the cluster in $CLUSTER_DIR failed"
  fi
  if [[ -n $WORK && -d $WORK ]]; then
    if grep -qF " $WORK/" /proc/self/mountinfo; then
      say "warning: something is still mounted under $WORK; leaving it in place"
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

# spawn LOG CMD...: starts CMD with setsid, in its own process group (so that
# Ctrl-C reaches this script first, which then stops it in order), and tracks
# it; sets SPAWNED.
spawn() {
  local log=$1
  shift
  setsid "$@" >"$log" 2>&1 </dev/null &
  SPAWNED=$!
  PIDS+=("$SPAWNED")
}

# wait_until SECONDS PID CMD...: polls CMD until it succeeds; fails early if
# PID exits.
wait_until() {
  local limit=$1 pid=$2 i
  shift 2
  for ((i = 0; i < limit * 10; i++)); do
    "$@" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# not_started NAME PID LOG: why NAME is not up, for the notes under the table.
not_started() {
  local name=$1 pid=$2 log=$3 rc=0 last
  last=$(grep -v '^[[:space:]]*$' "$log" 2>/dev/null | tail -n 1)
  if kill -0 "$pid" 2>/dev/null; then
    echo "$name did not become ready in time: ${last:-no output}"
  else
    wait "$pid" 2>/dev/null || rc=$?
    echo "$name exited with status $rc: ${last:-no output}"
  fi
}

# --- dependencies and builds ------------------------------------------------

deps() {
  local need=()
  command -v fio >/dev/null || need+=(fio)
  command -v fusermount3 >/dev/null || need+=(fuse3)
  command -v gocryptfs >/dev/null || need+=(gocryptfs)
  command -v python3 >/dev/null || need+=(python3)
  command -v setsid >/dev/null || need+=(util-linux)
  # QEMU's LUKS through its storage daemon's FUSE export.
  command -v qemu-img >/dev/null || need+=(qemu-utils)
  command -v qemu-storage-daemon >/dev/null || need+=(qemu-system-common)
  if is_rados_run && [[ -z ${HOSTCRYPT_RADOS:-} ]]; then
    # The cluster's daemons, the rbd tool and librados' headers (for
    # bin/hostcryptd-ceph). Debian's fio has the rbd engine (it needs librbd1).
    scripts/deps.sh ceph || die "installing Ceph's packages failed"
  fi
  ((${#need[@]})) || return 0
  command -v apt-get >/dev/null || die "missing ${need[*]}, and no apt-get to install them"
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

HOSTCRYPT_MISSING="" # why the hostcryptd targets cannot run, empty if they can

build() {
  mkdir -p "$WORK/bin"
  say "building the passthrough reference and the table tool"
  "$GO" build -o "$WORK/bin/passthrough" ./bench/passthrough
  "$GO" build -o "$WORK/bin/fiotable" ./bench/fiotable
  say "building the daemons (make build)"
  if ! make --no-print-directory build GO="$GO" >"$WORK/make-build.log" 2>&1; then
    HOSTCRYPT_MISSING="\`make build\` failed: $(grep -v '^make' "$WORK/make-build.log" | tail -n 1)"
  else
    local b
    for b in keystored hostcryptd hostcrypt; do
      if [[ ! -x bin/$b ]]; then
        HOSTCRYPT_MISSING="\`make build\` produced no bin/$b yet"
        break
      fi
    done
  fi
  [[ -z $HOSTCRYPT_MISSING ]] || say "hostcryptd targets will be skipped: $HOSTCRYPT_MISSING"
}

# --- a Ceph cluster, for the targets on a shared store ----------------------

# is_rados LABEL: a target on the Ceph cluster.
is_rados() { [[ " $RADOS_TARGETS " == *" $1 "* ]]; }

# is_rados_run: TARGETS names one of them.
is_rados_run() {
  local label
  for label in $TARGETS; do is_rados "$label" && return 0; done
  return 1
}

CLUSTER_WHY="" # why no cluster could be started, empty if none was needed or it runs

# cluster: makes sure a cluster serves the run (started once, destroyed by
# cleanup; it exports HOSTCRYPT_RADOS and the rest), or sets CLUSTER_WHY and
# returns 1.
cluster() {
  [[ -n ${HOSTCRYPT_RADOS:-} ]] && return 0
  [[ -z $CLUSTER_WHY ]] || return 1
  local env_lines
  CLUSTER_DIR=$WORK/ceph
  say "starting a throw-away Ceph cluster in ${CLUSTER_DIR#"$WORK/"}"
  if ! env_lines=$(scripts/ceph-cluster.sh start "$CLUSTER_DIR" 2>"$WORK/ceph-cluster.log"); then
    CLUSTER_WHY="scripts/ceph-cluster.sh start failed: $(tail -n 1 "$WORK/ceph-cluster.log")"
    return 1
  fi
  eval "$env_lines"
  say "$(tail -n 1 "$WORK/ceph-cluster.log")"
}

# ceph_pids: "osd=PID mon=PID" of a cluster of scripts/ceph-cluster.sh (its
# pid files beside CEPH_CONF), nothing for another cluster.
ceph_pids() {
  local run=${CEPH_CONF%/*}/run name pid out=""
  for name in osd:osd.0 mon:mon.a; do
    pid=$(cat "$run/${name#*:}.pid" 2>/dev/null) || continue
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/stat ]] && out+="${name%%:*}=$pid "
  done
  echo "$out"
}

# osd_perf: the command printing osd.0's counters, if its admin socket is on
# this machine.
osd_perf() {
  local cmd="ceph --conf $CEPH_CONF daemon osd.0 perf dump"
  # shellcheck disable=SC2086 # a command line
  timeout 30 $cmd >/dev/null 2>&1 && echo "$cmd"
}

# The names this run gives to its RBD images and namespaces, and what
# forget_rados removes when a target stops.
RADOS_SEQ=0
RADOS_IMAGE=""
RADOS_NS=""

rbd_() { timeout 120 rbd --id "$HOSTCRYPT_CEPH_USER" "$@"; }
rados_() { timeout 120 rados --id "$HOSTCRYPT_CEPH_USER" -p "$HOSTCRYPT_CEPH_POOL" "$@"; }

# forget_rados: removes the image or the namespace's objects of the target
# that just stopped, so that the pool does not fill up over the rounds.
forget_rados() {
  if [[ -n $RADOS_IMAGE ]]; then
    rbd_ rm --no-progress "$HOSTCRYPT_CEPH_POOL/$RADOS_IMAGE" >/dev/null 2>&1 ||
      say "warning: cannot remove RBD image $RADOS_IMAGE"
  fi
  if [[ -n $RADOS_NS ]]; then
    local obj
    rados_ -N "$RADOS_NS" ls 2>/dev/null | while read -r obj; do
      rados_ -N "$RADOS_NS" rm "$obj" 2>/dev/null || true
    done
  fi
  RADOS_IMAGE="" RADOS_NS=""
}

# --- targets ------------------------------------------------------------------
# A start_* function starts one target in directory $1 and sets FIO_TARGET
# (a directory or an image file) and DAEMON_PIDS; on failure it sets WHY and
# returns 1. It must not rely on set -e: it runs inside an "if".

FIO_TARGET=""
DAEMON_PIDS=""
WHY=""

start_raw() { # DIR: the backing file system itself, no FUSE, no daemon
  mkdir -p "$1/data"
  FIO_TARGET=$1/data
}

start_passthrough() { # DIR tuned|stock|hostcrypt [SYNC-INTERVAL [SEAL]]
  local d=$1
  mkdir -p "$d/backing" "$d/mnt"
  MOUNTS+=("$d/mnt")
  spawn "$d/passthrough.log" "$WORK/bin/passthrough" --backing "$d/backing" --mount "$d/mnt" \
    --options "$2" --sync-interval "${3:-0}" --seal "${4:-none}" --ready-file "$d/ready"
  if ! wait_until 30 "$SPAWNED" test -e "$d/ready"; then
    WHY=$(not_started "the passthrough" "$SPAWNED" "$d/passthrough.log")
    return 1
  fi
  FIO_TARGET=$d/mnt
  DAEMON_PIDS=$SPAWNED
}

start_gocryptfs() { # DIR
  local d=$1
  mkdir -p "$d/cipher" "$d/mnt"
  (umask 077 && head -c 24 /dev/urandom | base64 >"$d/password")
  if ! gocryptfs -init -q -passfile "$d/password" "$d/cipher" >"$d/init.log" 2>&1; then
    WHY="gocryptfs -init failed: $(tail -n 1 "$d/init.log")"
    return 1
  fi
  MOUNTS+=("$d/mnt")
  # -fg keeps the daemon's own PID, whose CPU time the suite counts.
  spawn "$d/gocryptfs.log" gocryptfs -fg -q -passfile "$d/password" "$d/cipher" "$d/mnt"
  if ! wait_until 30 "$SPAWNED" mountpoint -q "$d/mnt"; then
    WHY=$(not_started gocryptfs "$SPAWNED" "$d/gocryptfs.log")
    return 1
  fi
  FIO_TARGET=$d/mnt
  DAEMON_PIDS=$SPAWNED
}

# is_mounted PATH: a mount point of this mount namespace, directory or file.
is_mounted() {
  awk -v p="$1" '$5 == p { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# QEMU's own encrypted format, served the way hostcryptd serves a disk:
# a LUKS image (AES-256-XTS, plain64 IVs, no integrity) opened by
# qemu-storage-daemon on a buffered backing file (cache.direct=off, as a
# hostcrypt chunk file is buffered) and exported as an image file through
# FUSE.
start_qemu_luks() { # DIR
  local d=$1
  mkdir -p "$d/img" "$d/mnt"
  (umask 077 && head -c 24 /dev/urandom | base64 >"$d/password")
  # qemu-img times its key derivation with the thread's CPU clock, which
  # on a busy virtual machine sometimes reads no time at all ("Unable to
  # get accurate CPU usage"): try again a few times.
  local try
  for try in 1 2 3 4 5; do
    if qemu-img create -q -f luks --object "secret,id=sec0,file=$d/password" \
      -o key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64,hash-alg=sha256,iter-time=500 \
      "$d/img/disk.luks" "$SIZE" >"$d/create.log" 2>&1; then
      break
    fi
    rm -f "$d/img/disk.luks"
    if ((try == 5)); then
      WHY="qemu-img create -f luks failed: $(tail -n 1 "$d/create.log")"
      return 1
    fi
  done
  : >"$d/mnt/disk.img" # the export's mount point is a file
  MOUNTS+=("$d/mnt/disk.img")
  spawn "$d/qemu-storage-daemon.log" qemu-storage-daemon \
    --object "secret,id=sec0,file=$d/password" \
    --blockdev "driver=file,node-name=file0,filename=$d/img/disk.luks,cache.direct=off,aio=threads" \
    --blockdev driver=luks,node-name=luks0,file=file0,key-secret=sec0 \
    --export "type=fuse,id=exp0,node-name=luks0,mountpoint=$d/mnt/disk.img,writable=on"
  if ! wait_until 60 "$SPAWNED" is_mounted "$d/mnt/disk.img"; then
    WHY=$(not_started qemu-storage-daemon "$SPAWNED" "$d/qemu-storage-daemon.log")
    return 1
  fi
  FIO_TARGET=$d/mnt/disk.img
  DAEMON_PIDS=$SPAWNED
}

# The ceiling on a shared store: what QEMU gets from librbd. An RBD image in
# the same pool, reached by fio's rbd engine (librbd in fio's own process, as
# in QEMU's), librbd's cache off. The image has layering alone: the job with
# two fio processes would otherwise pass the exclusive lock back and forth,
# which a VM's single client never does.
start_rbd() { # DIR
  RADOS_SEQ=$((RADOS_SEQ + 1))
  RADOS_IMAGE=bench-rbd-$RADOS_SEQ
  if ! rbd_ create --size "$RADOS_SIZE" --image-feature layering "$HOSTCRYPT_CEPH_POOL/$RADOS_IMAGE" \
    >"$1/rbd.log" 2>&1 ||
    ! rbd_ config image set "$HOSTCRYPT_CEPH_POOL/$RADOS_IMAGE" rbd_cache false >>"$1/rbd.log" 2>&1; then
    WHY="creating RBD image $RADOS_IMAGE failed: $(tail -n 1 "$1/rbd.log")"
    return 1
  fi
  FIO_TARGET=rbd:$HOSTCRYPT_CEPH_POOL/$RADOS_IMAGE
}

# The hostcryptd targets: one data disk of SIZE on a VM named bench, at LUN 0.
# Their settings differ only in what hc_setup below creates.
KEYSTORE_URL=""
HC_SOCK=""
HC_KS_DIR=""

# The CLI against this run's daemons: hc_host talks to hostcryptd only,
# hc_vault to the key store as its administrator.
hc_host() {
  bin/hostcrypt --host-socket "$HC_SOCK" "$@"
}
hc_vault() {
  bin/hostcrypt --keystore "$KEYSTORE_URL" --keystore-ca "$HC_KS_DIR/ca.pem" \
    --token-file "$HC_KS_DIR/admin.token" "$@"
}

# run_hc LOG DESCRIPTION hc_host|hc_vault ARGS...: one CLI call, logged to LOG;
# its output is also left in LOG.out.
run_hc() {
  local log=$1 what=$2
  shift 2
  echo "+ hostcrypt ${*:2}" >>"$log"
  # stdout alone goes to LOG.out (the JSON a caller may parse); warnings on
  # stderr go to the log only.
  if ! "$@" >"$log.out" 2>"$log.err"; then
    cat "$log.out" "$log.err" >>"$log"
    WHY="$what failed: $(tail -n 1 "$log.err")"
    return 1
  fi
  cat "$log.out" "$log.err" >>"$log"
}

# json_field NAME: the first value of key NAME anywhere in the JSON on stdin.
json_field() {
  python3 -c '
import json, sys
def find(v, name):
    if isinstance(v, dict):
        if name in v and not isinstance(v[name], (dict, list)):
            return v[name]
        v = list(v.values())
    if isinstance(v, list):
        for x in v:
            r = find(x, name)
            if r is not None:
                return r
    return None
r = find(json.load(sys.stdin), sys.argv[1])
if r is None:
    sys.exit(1)
print(r)' "$1"
}

start_hostcrypt() { # DIR LABEL
  local d=$1 label=$2 ks pid daemon=${HOSTCRYPTD:-bin/hostcryptd} storage=$1/storage
  local -a flags=()
  if is_rados "$label"; then
    # bin/hostcryptd-ceph on a namespace of its own in the cluster's pool,
    # its host cache larger than the disk.
    RADOS_SEQ=$((RADOS_SEQ + 1))
    RADOS_NS=bench-$label-$RADOS_SEQ
    daemon=${HOSTCRYPTD_CEPH:-bin/hostcryptd-ceph}
    storage="rados://$HOSTCRYPT_CEPH_POOL/$RADOS_NS?conf=$CEPH_CONF&id=$HOSTCRYPT_CEPH_USER"
    flags=(--cache-size "$(($(numfmt --from=iec "$RADOS_SIZE") * 2))")
  fi
  ks=$d/keystore
  HC_KS_DIR=$ks
  mkdir -p "$ks" "$d/state" "$d/storage" "$d/host" "$d/mnt"
  spawn "$d/keystored.log" bin/keystored --dir "$ks" --listen 127.0.0.1:0
  pid=$SPAWNED
  # keystored prints the address it listens on (port 0 picks a free one),
  # and writes it to DIR/address.
  if ! wait_until 30 "$pid" grep -qoE 'https://127\.0\.0\.1:[0-9]+' "$d/keystored.log" ||
    ! wait_until 10 "$pid" test -s "$ks/platform.token"; then
    WHY=$(not_started keystored "$pid" "$d/keystored.log")
    return 1
  fi
  KEYSTORE_URL=$(grep -oE 'https://127\.0\.0\.1:[0-9]+' "$d/keystored.log" | head -n 1)

  MOUNTS+=("$d/mnt")
  HC_SOCK=$d/state/hostcryptd.sock
  # shellcheck disable=SC2086 # HOSTCRYPTD_FLAGS is split on purpose
  spawn "$d/hostcryptd.log" "$daemon" --state "$d/state" --storage "$storage" \
    --host-dir "$d/host" --mount "$d/mnt" --keystore "$KEYSTORE_URL" \
    --keystore-ca "$ks/ca.pem" --token-file "$ks/platform.token" "${flags[@]}" ${HOSTCRYPTD_FLAGS:-}
  pid=$SPAWNED
  if ! wait_until 30 "$pid" test -S "$HC_SOCK" || ! wait_until 30 "$pid" mountpoint -q "$d/mnt"; then
    WHY=$(not_started hostcryptd "$pid" "$d/hostcryptd.log")
    return 1
  fi

  hc_setup "$d/cli.log" "$label" || return 1
  if ! wait_until 30 "$pid" test -f "$d/mnt/bench/data-0.img"; then
    WHY="vm create returned, but bench/data-0.img did not appear in the mount"
    return 1
  fi
  FIO_TARGET=$d/mnt/bench/data-0.img
  DAEMON_PIDS=$pid
}

# hc_setup LOG LABEL: creates the VM "bench" with data disk d1 (LUN 0) the way
# the target LABEL wants it.
hc_setup() {
  local log=$1 label=$2 caching=None type="" eah=true
  case $label in
  rados-none | rados-readonly | rados-readwrite)
    case $label in
    rados-none) caching=None ;;
    rados-readonly) caching=ReadOnly ;;
    rados-readwrite) caching=ReadWrite ;;
    esac
    run_hc "$log" "disk create" hc_host disk create --name d1 --size "$RADOS_SIZE" || return 1
    run_hc "$log" "vm create" hc_host vm create --name bench --os-disk-size 16M --data-disks "d1:$caching" ||
      return 1
    return 0
    ;;
  hostcrypt-pmk)
    run_hc "$log" "disk create" hc_host disk create --name d1 --size "$SIZE" || return 1
    run_hc "$log" "vm create" hc_host vm create --name bench --os-disk-size 1G --data-disks d1:None ||
      return 1
    return 0
    ;;
  cmk) type=EncryptionAtRestWithCustomerKey ;;
  cmk-double) type=EncryptionAtRestWithPlatformAndCustomerKeys ;;
  cmk-readonly) type=EncryptionAtRestWithCustomerKey caching=ReadOnly ;;
  cmk-readwrite) type=EncryptionAtRestWithCustomerKey caching=ReadWrite ;;
  cmk-readwrite-noeah) type=EncryptionAtRestWithCustomerKey caching=ReadWrite eah=false ;;
  *)
    WHY="unknown hostcrypt target $label"
    return 1
    ;;
  esac
  # Customer-managed key: vault, RSA key, disk encryption set, and access for
  # the set's identity, as a user would do it.
  local kid principal
  run_hc "$log" "keyvault create" hc_vault keyvault create --name benchvault || return 1
  run_hc "$log" "key create" hc_vault -o json key create --vault-name benchvault --name benchkey \
    --kty RSA --size 2048 || return 1
  kid=$(json_field kid <"$log.out") || { WHY="key create printed no kid"; return 1; }
  run_hc "$log" "des create" hc_host -o json des create --name benchdes --key-url "$kid" \
    --encryption-type "$type" || return 1
  principal=$(json_field principalId <"$log.out") || { WHY="des create printed no principalId"; return 1; }
  run_hc "$log" "keyvault set-policy" hc_vault keyvault set-policy --name benchvault --object-id "$principal" \
    --key-permissions get,wrapKey,unwrapKey || return 1
  run_hc "$log" "disk create" hc_host disk create --name d1 --size "$SIZE" --disk-encryption-set benchdes \
    --encryption-type "$type" || return 1
  run_hc "$log" "vm create" hc_host vm create --name bench --os-disk-size 1G --data-disks "d1:$caching" \
    --encryption-at-host "$eah" || return 1
}

# skip_reason LABEL: prints why LABEL cannot run in this build, nothing if it can.
skip_reason() {
  case $1 in
  raw | passthrough | passthrough-stock | passthrough-hc | passthrough-sync | passthrough-aes | passthrough-double | gocryptfs | qemu-luks) ;;
  rbd)
    if ! command -v rbd >/dev/null; then
      echo "the rbd tool is missing (scripts/deps.sh ceph installs it)"
    elif ! fio --enghelp=rbd >/dev/null 2>&1; then
      echo "this fio has no rbd engine (Debian's has it, with librbd1)"
    elif [[ -z ${HOSTCRYPT_RADOS:-} ]]; then
      echo "${CLUSTER_WHY:-no Ceph cluster}"
    fi
    ;;
  rados-*)
    if [[ -n $HOSTCRYPT_MISSING ]]; then
      echo "$HOSTCRYPT_MISSING"
    elif [[ ! -x bin/hostcryptd-ceph ]]; then
      echo "\`make build\` built no bin/hostcryptd-ceph: librados-dev is missing (scripts/deps.sh ceph installs it)"
    elif [[ -z ${HOSTCRYPT_RADOS:-} ]]; then
      echo "${CLUSTER_WHY:-no Ceph cluster}"
    fi
    ;;
  hostcrypt-* | cmk*)
    if [[ -n $HOSTCRYPT_MISSING ]]; then
      echo "$HOSTCRYPT_MISSING"
      return
    fi
    ;;&
  cmk*)
    # Customer-managed keys need the CLI's des group; the cached rows need
    # host caching. Each row runs as soon as the CLI has what it needs.
    if ! bin/hostcrypt des --help >/dev/null 2>&1; then
      echo "the CLI has no \`des\` group yet (\`hostcrypt des --help\` fails)"
    elif [[ $1 == cmk-read* ]] && ! bin/hostcrypt vm create --help 2>&1 | grep -qi caching; then
      echo "the CLI has no disk caching yet (\`hostcrypt vm create --help\` does not mention it)"
    fi
    ;;
  esac
}

# What each target is, for the notes under the table.
describe() {
  case $1 in
  raw) echo "the backing file system ($(findmnt -n -o FSTYPE -T "$BENCH_TMPDIR")) itself, no FUSE: the machine's limit" ;;
  passthrough) echo "unencrypted go-fuse v2.12.1 loopback, kernel passthrough off, tuned options (bench/passthrough)" ;;
  passthrough-stock) echo "the same loopback with go-fuse's default options" ;;
  passthrough-hc) echo "the same loopback with hostcryptd's mount options added (default_permissions, negative entry timeout, direct mount)" ;;
  passthrough-sync) echo "passthrough-hc that also fdatasyncs every open file every $FLUSH_INTERVAL, as hostcryptd flushes a disk: the same durability" ;;
  passthrough-aes) echo "passthrough-sync that also seals (writes) or opens (reads) every 4 KiB block with AES-256-GCM and throws the result away: the cipher's cost alone" ;;
  passthrough-double) echo "passthrough-aes with XChaCha20-Poly1305 over AES-256-GCM, as double encryption's two layers" ;;
  gocryptfs) echo "$(gocryptfs -version 2>/dev/null | cut -d';' -f1), default settings (AES-256-GCM)" ;;
  qemu-luks) echo "$(qemu-storage-daemon --version 2>/dev/null | head -n 1 | sed 's/ (.*//; s/ version//'): a LUKS image (AES-256-XTS, plain64) on a buffered file (cache.direct=off), exported through FUSE" ;;
  hostcrypt-pmk) echo "hostcryptd data disk, platform-managed key, cache None" ;;
  cmk) echo "hostcryptd data disk, customer-managed key, cache None" ;;
  cmk-double) echo "hostcryptd data disk, platform and customer keys (double encryption), cache None" ;;
  cmk-readonly) echo "hostcryptd data disk, customer-managed key, cache ReadOnly" ;;
  cmk-readwrite) echo "hostcryptd data disk, customer-managed key, cache ReadWrite" ;;
  cmk-readwrite-noeah) echo "hostcryptd data disk, customer-managed key, cache ReadWrite, encryption at host off" ;;
  rbd) echo "an unencrypted RBD image (layering, rbd_cache=false) in the same pool, fio --ioengine=rbd: what QEMU gets from librbd" ;;
  rados-none) echo "hostcryptd-ceph data disk on RADOS, platform-managed key, cache None" ;;
  rados-readonly) echo "hostcryptd-ceph data disk on RADOS, platform-managed key, cache ReadOnly (host cache twice the disk)" ;;
  rados-readwrite) echo "hostcryptd-ceph data disk on RADOS, platform-managed key, cache ReadWrite (host cache twice the disk)" ;;
  esac
}

# record LABEL STATUS [WHY]: a line of targets.txt, without this run's paths.
record() {
  local line="$*"
  [[ -z $WORK ]] || line=${line//"$WORK"/<work dir>}
  echo "$line" >>"$OUT/targets.txt"
}

# start_target LABEL DIR: starts LABEL in DIR; sets FIO_TARGET and
# DAEMON_PIDS, or WHY and returns 1.
start_target() {
  local label=$1 dir=$2
  FIO_TARGET="" DAEMON_PIDS="" WHY=""
  case $label in
  raw) start_raw "$dir" ;;
  passthrough) start_passthrough "$dir" tuned ;;
  passthrough-stock) start_passthrough "$dir" stock ;;
  passthrough-hc) start_passthrough "$dir" hostcrypt ;;
  passthrough-sync) start_passthrough "$dir" hostcrypt "$FLUSH_INTERVAL" ;;
  passthrough-aes) start_passthrough "$dir" hostcrypt "$FLUSH_INTERVAL" aes ;;
  passthrough-double) start_passthrough "$dir" hostcrypt "$FLUSH_INTERVAL" double ;;
  gocryptfs) start_gocryptfs "$dir" ;;
  qemu-luks) start_qemu_luks "$dir" ;;
  rbd) start_rbd "$dir" ;;
  *) start_hostcrypt "$dir" "$label" ;;
  esac
}

# run_suite LABEL SHOWN JOBS OUT ROUND PASSES: starts LABEL on fresh
# directories, writes its file in full PASSES times, runs the suite's JOBS
# on it under the name SHOWN with its output in OUT, stops it. Returns 1
# when the target did not start (WHY says why).
run_suite() {
  local label=$1 shown=$2 jobs=$3 out=$4 round=$5 passes=$6 dir=$WORK/$1 rc=0 size=$SIZE warm=0
  if is_rados "$label"; then
    size=$RADOS_SIZE warm=1
  fi
  mkdir -p "$dir" "$out"
  say "$shown: starting"
  if ! start_target "$label" "$dir"; then
    say "$shown: $WHY"
    stop_all
    forget_rados
    cp "$dir"/*.log "$out/" 2>/dev/null || true
    rm -rf "$dir"
    return 1
  fi
  say "$shown: $jobs on ${FIO_TARGET#"$WORK/"}$( ((ROUNDS == 1)) || echo ", round $round of $ROUNDS")"
  # In the background, so that a signal reaches this script at once; in
  # its own process group, so that cleanup can stop fio with it.
  local cost="" osd_perf=""
  if is_rados "$label"; then
    cost=$(ceph_pids)
    osd_perf=$(osd_perf)
  fi
  JOBS=$jobs PREP_PASSES=$passes DAEMON_PIDS=$DAEMON_PIDS SIZE=$size WARM=$warm RBD_CLIENT=${HOSTCRYPT_CEPH_USER:-admin} \
    COST_PIDS=$cost OSD_PERF=$osd_perf setsid bench/fio-suite.sh "$FIO_TARGET" "$shown" "$out" >"$out/lines.txt" &
  PIDS+=("$!")
  wait "$!" || rc=$?
  grep -v '^#' "$out/lines.txt" | sed "s/\$/ round=$round/" >>"$OUT/lines.txt" || true
  [[ $rc == 0 ]] || say "$shown: the suite exited with status $rc (see $out/)"
  say "$shown: stopping"
  stop_all
  forget_rados
  # Keep the daemons' logs with the results, then free the disk space.
  cp "$dir"/*.log "$out/" 2>/dev/null || true
  rm -rf "$dir"
}

# run_target LABEL STATE ROUND: one round of one target in one state. The
# suite's output goes to OUT/SHOWN[/round-N][/JOB], where SHOWN is LABEL,
# or LABEL@fresh for the fresh state, the name the table uses.
run_target() {
  local label=$1 state=$2 round=$3 why shown=$1 out job
  [[ $state == fresh ]] && shown=$label@fresh
  out=$OUT/$shown
  ((ROUNDS == 1)) || out=$out/round-$round
  # The cluster starts here, not in skip_reason's subshell: its
  # environment must reach the targets.
  if is_rados "$label"; then cluster || true; fi
  why=$(skip_reason "$label")
  if [[ -n $why ]]; then
    say "$shown: skipped: $why"
    record "$shown" skipped "$why"
    return 0
  fi
  WHY=""
  local jobs=${JOBS:-$ALL_JOBS}
  is_rados "$label" && jobs=${JOBS:-$RADOS_JOBS}
  if [[ $state == rewritten ]]; then
    run_suite "$label" "$shown" "$jobs" "$out" "$round" 2 || true
  else
    # A target of its own for each job, started and written in full once.
    for job in $jobs; do
      run_suite "$label" "$shown" "$job" "$out/$job" "$round" 1 || true
    done
  fi
  if grep -qE "^$shown .* round=$round\$" "$OUT/lines.txt"; then
    record "$shown" ok "$(describe "$label")$([[ $state == fresh ]] && echo "; fresh: for each job, started and written in full once, then the job")"
  elif [[ -n $WHY ]]; then
    record "$shown" failed "$WHY"
  else
    record "$shown" failed "the fio suite produced no result (see $out/)"
  fi
}

# --- the run ------------------------------------------------------------------

meta() {
  local cpu mem fuse_version
  cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  mem=$(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
  fuse_version=$("$GO" list -m -f '{{.Version}}' github.com/hanwen/go-fuse/v2 2>/dev/null || echo unknown)
  cat <<EOF
date: $(date -u '+%Y-%m-%d %H:%M UTC')
machine: ${cpu:-unknown CPU}, $(nproc) CPUs, $mem, kernel $(uname -r), backing file system $(findmnt -n -o FSTYPE -T "$BENCH_TMPDIR")
versions: $("$GO" version | cut -d' ' -f3), go-fuse $fuse_version, $(fio --version), $(gocryptfs -version 2>/dev/null | cut -d';' -f1)
commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo " (with local changes)")
jobs: $RUNTIME s each (fio time_based), on a $SIZE file$(is_rados_run && echo " ($RADOS_SIZE on the shared store)") written in full first (twice in the rewritten state, once when fresh), O_DIRECT, disk states: $STATES$([[ $STATES == *fresh* ]] && echo " (fresh for: $FRESH_TARGETS)"), page cache $([[ ${DROP_CACHES:-1} == 1 ]] && echo "dropped before each job" || echo "kept between jobs"); targets run one after another$(
    ((ROUNDS == 1)) || echo ", $ROUNDS rounds of all targets: every figure is the median of a target's rounds, every ratio the median of the rounds' ratios")$(
    ((${WAIT_IDLE:-0} > 0)) && echo "; each job waited up to $WAIT_IDLE s for the machine to be less than ${IDLE_BUSY_PCT:-15} % busy")
EOF
  if is_rados_run; then
    cat <<EOF
shared store: $(ceph-osd --version 2>/dev/null | sed 's/ (.*//; s/ version//'), $([[ -z ${HOSTCRYPT_RADOS:-} ]] && echo "a throw-away cluster (scripts/ceph-cluster.sh: one monitor, one BlueStore OSD on a sparse file on $(findmnt -n -o FSTYPE -T "$BENCH_TMPDIR"), one copy) on this machine" || echo "the cluster of HOSTCRYPT_RADOS"); $RADOS_SIZE disks and images, jobs $RADOS_JOBS; before each job that reads at random, the whole disk read once at random (4 KiB, every block once) if written since
load average: $(cut -d' ' -f1-3 /proc/loadavg) at the start
EOF
  fi
}

main() {
  [[ $(id -u) == 0 ]] || die "run as root (FUSE mounts, dropping the page cache, apt-get)"
  [[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a whole number of at least 1, not '$ROUNDS'"
  local start=$SECONDS label state
  for label in $TARGETS; do
    [[ -n $(describe "$label") ]] || die "unknown target $label (known: $ALL_TARGETS passthrough-stock passthrough-aes passthrough-double $RADOS_TARGETS)"
  done
  for state in $STATES; do
    [[ $state == rewritten || $state == fresh ]] || die "unknown state $state (known: rewritten fresh)"
  done
  deps
  mkdir -p "$BENCH_TMPDIR"
  WORK=$(mktemp -d "$BENCH_TMPDIR/hostcrypt-bench.XXXXXX")
  build
  rm -rf "$OUT"
  mkdir -p "$OUT"
  : >"$OUT/lines.txt"
  : >"$OUT/targets.txt"
  meta >"$OUT/meta.txt"
  local round state
  for ((round = 1; round <= ROUNDS; round++)); do
    for state in $STATES; do
      for label in $TARGETS; do
        if [[ $state == fresh ]] && ! [[ " $FRESH_TARGETS " == *" $label "* ]]; then
          continue
        fi
        run_target "$label" "$state" "$round"
      done
    done
  done
  echo "wall time: $(((SECONDS - start) / 60)) min $(((SECONDS - start) % 60)) s for the whole run" >>"$OUT/meta.txt"
  is_rados_run && echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) at the end" >>"$OUT/meta.txt"
  "$WORK/bin/fiotable" --dir "$OUT" >"$RESULTS/latest.md"
  if [[ $UPDATE_DOCS == 1 ]]; then
    "$WORK/bin/fiotable" --dir "$OUT" --section "$DOC_SECTION" --update docs/PERFORMANCE.md >/dev/null
    say "table written into docs/PERFORMANCE.md"
  fi
  cat "$RESULTS/latest.md"
  say "done in $((SECONDS - start)) s; table in $RESULTS/latest.md, fio output in $OUT/"
}

main
