#!/usr/bin/env bash
# Installs what hostcrypt needs on a Debian machine, once. Runs as root
# (or through sudo); does nothing when everything is there already.
#
# usage: scripts/deps.sh [qemu] [ceph]
#   (none)  what `make run` and the main test suite need (the web
#           console's test included: chromium)
#   qemu    also what booting a guest needs (scripts/mkguest.sh, the README's
#           QEMU example and its test): QEMU, a kernel, busybox, cpio
#   ceph    also a single-node Ceph cluster's daemons and librados' headers
#           (the RADOS backend, make test-ceph)
# Everything asked for is installed with one `apt-get update`.
set -euo pipefail

with_qemu=0 with_ceph=0
for a in "$@"; do
  case "$a" in
    qemu) with_qemu=1 ;;
    ceph) with_ceph=1 ;;
    *) echo "usage: scripts/deps.sh [qemu] [ceph]" >&2; exit 2 ;;
  esac
done

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v fio >/dev/null || need+=(fio)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v losetup >/dev/null || need+=(util-linux)
command -v setpriv >/dev/null || need+=(util-linux)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v python3 >/dev/null || need+=(python3)
# promtool checks the metrics and tests their recording rules.
command -v promtool >/dev/null || need+=(prometheus)
# The web console's browser test drives headless Chromium.
command -v chromium >/dev/null || need+=(chromium)
if ((with_qemu)); then
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  compgen -G '/boot/vmlinuz-*' >/dev/null || need+=(linux-image-amd64)
  dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
  command -v cpio >/dev/null || need+=(cpio)
  command -v modprobe >/dev/null || need+=(kmod)
fi
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
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  echo "deps: installing ${need[*]} (this takes a few minutes the first time)" >&2
  # apt and debconf talk a lot, on stderr too (debconf's "delaying package
  # configuration, since apt-utils is not installed", for one): keep it all
  # in a log and show it only when something fails.
  log=$(mktemp /tmp/hostcrypt-deps.XXXXXX)
  export DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true
  if ! { $sudo env DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true apt-get update -qq &&
    $sudo env DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
      apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "deps: installing ${need[*]} failed (log above, kept in $log)" >&2
    exit 1
  fi
  rm -f "$log"
fi

if ! command -v go >/dev/null && [[ ! -x /usr/local/go/bin/go ]]; then
  echo "deps: Go 1.26 or later is required (https://go.dev/doc/install)" >&2
  exit 1
fi
