#!/usr/bin/env bash
# Installs what hostcrypt needs on a Debian machine, once. Runs as root
# (or through sudo); does nothing when everything is there already.
set -euo pipefail

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v fio >/dev/null || need+=(fio)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v losetup >/dev/null || need+=(util-linux)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v python3 >/dev/null || need+=(python3)

if ((${#need[@]})); then
  sudo=""
  [[ $(id -u) == 0 ]] || sudo=sudo
  echo "deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v go >/dev/null && [[ ! -x /usr/local/go/bin/go ]]; then
  echo "deps: Go 1.26 or later is required (https://go.dev/doc/install)" >&2
  exit 1
fi
