#!/usr/bin/env bash
# Builds a small guest for QEMU from Debian's packages alone, no internet:
#   DIR/vmlinuz     the kernel of linux-image-amd64
#   DIR/initrd.img  busybox-static and the modules that find a virtio disk
#                   and mount ext4; it mounts /dev/vda as the root file
#                   system and switches to it
#   DIR/os.img      a 64 MiB ext4 root file system (mkfs.ext4 -d): busybox
#                   and an init that mounts the data disk /dev/vdb on /data
#                   when it holds a file system, runs /data/autorun.sh if there
#                   is one (then powers off), or else gives a shell on the
#                   console (exit powers off)
# Import os.img as a VM's OS disk (hostcrypt disk import) and boot it with
# the QEMU command line of the README.
#
# usage: scripts/mkguest.sh DIR
set -euo pipefail
[[ $# == 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
out=$1
"$(dirname "$0")/deps.sh" qemu

kernel=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
[[ -n $kernel ]] || { echo "mkguest: no kernel in /boot; install linux-image-amd64" >&2; exit 1; }
kver=${kernel#/boot/vmlinuz-}
[[ -d /lib/modules/$kver ]] || { echo "mkguest: no modules for $kver in /lib/modules" >&2; exit 1; }

mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The initramfs: busybox, the modules in load order, and an init.
ird=$work/initrd
mkdir -p "$ird"/{bin,dev,proc,sys,newroot,lib/modules}
cp /bin/busybox "$ird/bin/busybox"
n=0
: >"$ird/modules.order"
# crc32c-intel does not load under TCG; crc32c_generic stands in for it.
for path in $(for m in virtio_pci virtio_blk crc32c_generic ext4; do modprobe -S "$kver" --show-depends "$m"; done |
  awk '$1 == "insmod" && $2 !~ /crc32c-intel/ && !seen[$2]++ { print $2 }'); do
  n=$((n + 1))
  name=$(printf '%02d-%s' "$n" "$(basename "$path")")
  case $path in
  *.ko.xz) xz -dc "$path" >"$ird/lib/modules/${name%.xz}"; name=${name%.xz} ;;
  *.ko.zst) zstd -qdc "$path" >"$ird/lib/modules/${name%.zst}"; name=${name%.zst} ;;
  *.ko.gz) gzip -dc "$path" >"$ird/lib/modules/${name%.gz}"; name=${name%.gz} ;;
  *) cp "$path" "$ird/lib/modules/$name" ;;
  esac
  echo "$name" >>"$ird/modules.order"
done
cat >"$ird/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do
  insmod /lib/modules/$m 2>/dev/null || echo "initrd: module $m did not load"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if ! mount -t ext4 -o rw /dev/vda /newroot; then
  echo "initrd: cannot mount /dev/vda (the OS disk) as ext4"
  poweroff -f
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
INIT
chmod 755 "$ird/init"
(cd "$ird" && find . | cpio --quiet -o -H newc | gzip -9) >"$out/initrd.img"

# The root file system on the OS disk.
root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,data,root,etc}
cp /bin/busybox "$root/bin/busybox"
for a in $(/bin/busybox --list); do
  [[ $a == busybox ]] || ln -s busybox "$root/bin/$a"
done
cat >"$root/sbin/init" <<'INIT'
#!/bin/busybox sh
export PATH=/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "guest: booted from os.img (Linux $(uname -r))"
if [ -b /dev/vdb ] && mount -t ext4 /dev/vdb /data 2>/dev/null; then
  echo "guest: the data disk /dev/vdb is mounted on /data"
fi
if [ -x /data/autorun.sh ]; then
  /data/autorun.sh
  echo "guest: autorun.sh exited with status $?"
else
  echo "guest: a shell on the console; exit powers the guest off"
  setsid cttyhack sh
fi
sync
umount /data 2>/dev/null
mount -o remount,ro / 2>/dev/null
sync
echo "guest: powering off"
poweroff -f
INIT
chmod 755 "$root/sbin/init"
echo "hostcrypt guest" >"$root/etc/hostname"

rm -f "$out/os.img"
truncate -s 64M "$out/os.img"
mkfs.ext4 -q -F -L guest-os -d "$root" "$out/os.img"
cp "$kernel" "$out/vmlinuz"
echo "mkguest: $out/vmlinuz ($kver), $out/initrd.img, $out/os.img"
