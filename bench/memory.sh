#!/usr/bin/env bash
# bench/memory.sh — hostcryptd's memory with many disks under load.
#
# Attaches DISKS data disks of SIZE to one VM (customer-managed keys are not
# needed for this: the data path is the same), runs fio on all of them at
# once (4 KiB random writes at depth 32, then 1 MiB sequential writes, 1 MiB
# sequential reads, 4 KiB random reads), and reports the daemon's resident
# memory after attaching, after each phase, and its peak (VmHWM). Writes
# the table to bench/results/memory.md and, with UPDATE_DOCS=1, into
# docs/PERFORMANCE.md.
#
# Environment, all optional:
#   DISKS        number of data disks (default 10)
#   SIZE         size of each (default 1G)
#   RUNTIME      seconds per phase (default 10)
#   CACHING      caching of the data disks (default None)
#   UPDATE_DOCS  1: also write the table into docs/PERFORMANCE.md
#   BENCH_TMPDIR where the daemons' directories go (default /var/tmp)
set -euo pipefail

DISKS=${DISKS:-10}
SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-10}
CACHING=${CACHING:-None}
UPDATE_DOCS=${UPDATE_DOCS:-0}
BENCH_NAME=memory-bench
source "$(dirname "$0")/lib.sh"
start_daemons

specs=()
for i in $(seq 1 "$DISKS"); do
  hc disk create --name "m$i" --size "$SIZE" >/dev/null
  specs+=("m$i:$CACHING")
done
hc vm create --name mem --os-disk-size 16M --data-disks "$(IFS=,; echo "${specs[*]}")" >/dev/null
files=()
for i in $(seq 0 $((DISKS - 1))); do files+=("$WORK/mnt/mem/data-$i.img"); done
rss_idle=$(kib_of "$DAEMON" VmRSS)

# phase NAME FIO-ARGS...: one fio process with a job per disk, all at once.
phase() {
  local name=$1
  shift
  local args=() f
  for f in "${files[@]}"; do args+=(--name="$(basename "$f")" --filename="$f"); done
  say "$name on $DISKS disks"
  fio --direct=1 --size="$SIZE" --runtime="$RUNTIME" --time_based --fallocate=none --group_reporting \
    --output-format=json --output="$WORK/$name.json" "$@" "${args[@]}" >/dev/null 2>"$WORK/$name.err" ||
    die "fio $name failed: $(tail -n 2 "$WORK/$name.err")"
  python3 - "$WORK/$name.json" <<'PY'
import json, sys
t = open(sys.argv[1]).read()
j = json.loads(t[t.index("{"):])["jobs"][0]
r, w = j["read"], j["write"]
print("%.0f %.0f" % (r["iops"] + w["iops"], (r["bw_bytes"] + w["bw_bytes"]) / 2**20))
PY
}

OUT=bench/results/memory.md
mkdir -p bench/results
{
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) CPUs, $(awk '/^MemTotal:/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); $(fio --version)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo " (with local changes)")"
  echo "- $DISKS data disks of $SIZE, caching $CACHING, on one VM; fio on all of them at once, $RUNTIME s per phase, O_DIRECT"
  echo
  echo "| phase | IOPS (all disks) | MiB/s | daemon RSS after |"
  echo "| --- | ---: | ---: | ---: |"
  echo "| $DISKS disks attached, idle | - | - | $((rss_idle / 1024)) MiB |"
} >"$OUT.tmp"
for p in "rand-write-4k --rw=randwrite --bs=4k --ioengine=libaio --iodepth=32" \
  "seq-write-1M --rw=write --bs=1M --ioengine=psync" \
  "seq-read-1M --rw=read --bs=1M --ioengine=psync" \
  "rand-read-4k --rw=randread --bs=4k --ioengine=libaio --iodepth=32"; do
  read -r -a a <<<"$p"
  read -r iops mibs <<<"$(phase "${a[@]}")"
  echo "| ${a[0]} | $iops | $mibs | $(($(kib_of "$DAEMON" VmRSS) / 1024)) MiB |" >>"$OUT.tmp"
done
echo "- daemon peak RSS (VmHWM): $(($(kib_of "$DAEMON" VmHWM) / 1024)) MiB" >>"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
cat "$OUT"
if [[ $UPDATE_DOCS == 1 ]]; then
  update_docs memory-table "$OUT"
fi
