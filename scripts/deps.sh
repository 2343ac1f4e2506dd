#!/usr/bin/env bash
# Installs what hostcrypt needs on a Debian machine, once. Runs as root
# (or through sudo); does nothing when everything is there already.
#
#   scripts/deps.sh        what `make run` and the main test suite need
#   scripts/deps.sh ceph   that, plus a single-node Ceph cluster's daemons and
#                          librados' headers (the RADOS backend, make test-ceph)
set -euo pipefail

with_ceph=0
case "${1:-}" in
  "") ;;
  ceph) with_ceph=1 ;;
  *) echo "usage: scripts/deps.sh [ceph]" >&2; exit 2 ;;
esac

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v fio >/dev/null || need+=(fio)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v losetup >/dev/null || need+=(util-linux)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v python3 >/dev/null || need+=(python3)
if ((with_ceph)); then
  # No ceph-mgr: the cluster serves I/O without it, and it costs 300 MB and
  # most of the start-up time.
  command -v ceph-mon >/dev/null || need+=(ceph-mon)
  command -v ceph-osd >/dev/null || need+=(ceph-osd)
  [[ -e /usr/include/rados/librados.h ]] || need+=(librados-dev)
  command -v gcc >/dev/null || need+=(gcc)
fi

if ((${#need[@]})); then
  sudo=""
  [[ $(id -u) == 0 ]] || sudo=sudo
  echo "deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # apt's chatter (debconf notes included) is shown only when it fails.
  log=$(mktemp)
  if ! { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "deps: installing ${need[*]} failed" >&2
    exit 1
  fi
  rm -f "$log"
fi

if ! command -v go >/dev/null && [[ ! -x /usr/local/go/bin/go ]]; then
  echo "deps: Go 1.26 or later is required (https://go.dev/doc/install)" >&2
  exit 1
fi
