#!/usr/bin/env bash
# Removes var/ (or $VAR): the key store, every disk, the host's state and
# logs of `make run`, to start afresh. It refuses while anything under it is
# still in use — a mount (hostcryptd's, or a file system mounted from one of
# its images), a loop device attached to a file under it, or a daemon running
# on it — and says how to release each, since removing it then would either
# fail half-way or pull disks from under a running guest.
set -euo pipefail
cd "$(dirname "$0")/.."
VAR=${VAR:-$PWD/var}
if [[ ! -e $VAR ]]; then
  echo "reset: $VAR does not exist; nothing to remove"
  exit 0
fi
VAR=$(realpath "$VAR")

under() { [[ $1 == "$VAR" || $1 == "$VAR"/* ]]; }
busy=()

# Mount points, deepest first (mountinfo escapes spaces as \040).
while read -r mp; do
  mp=$(printf '%b' "$mp")
  if under "$mp"; then
    busy+=("mounted: $mp   (umount $mp; a mount left by a killed hostcryptd: umount -l $mp)")
  fi
done < <(awk '{ print $5 }' /proc/self/mountinfo | sort -r)

# Loop devices on a file under VAR, the image of a VM included.
while read -r dev file; do
  file=${file% (deleted)}
  if [[ -n $file ]] && under "$file"; then
    busy+=("loop device: $dev on $file   (umount what is mounted from it, then losetup -d $dev)")
  fi
done < <(losetup --list --noheadings --output NAME,BACK-FILE 2>/dev/null || true)

# Daemons running on it.
for p in /proc/[0-9]*; do
  [[ ${p#/proc/} == "$$" ]] && continue
  cmd=$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
  case $cmd in
  *keystored*" $VAR/"* | *hostcryptd*" $VAR/"*)
    busy+=("running: pid ${p#/proc/}: ${cmd%% *}   (stop make run, or kill -TERM ${p#/proc/})")
    ;;
  esac
done

if ((${#busy[@]})); then
  echo "reset: $VAR is still in use; nothing was removed:" >&2
  printf '  %s\n' "${busy[@]}" >&2
  exit 1
fi
rm -rf "$VAR"
echo "reset: removed $VAR"
