#!/usr/bin/env bash
# bench/cache-latency.sh — what the host cache is worth when storage is remote.
#
# Starts keystored and hostcryptd with --storage-latency (1 ms by default:
# every call from the host to storage waits that long, as over a network),
# then measures 4 KiB random reads and writes with fio on data disks attached
# with each caching mode, with encryption at host on and off. Before the
# jobs, each disk is written in full and read once in full in random order
# (4 KiB at a time, every block once), so a ReadOnly or ReadWrite cache is
# warm: sequential I/O goes around the cache by design (its sequential
# cut-off), so a sequential pass would not warm it. Writes the table to
# bench/results/cache-latency.md and, with UPDATE_DOCS=1, into
# docs/PERFORMANCE.md.
#
# Environment, all optional:
#   LATENCY      storage latency per call (default 1ms)
#   SIZE         disk size (default 256M; the cache holds twice that)
#   RUNTIME      seconds per fio job (default 8)
#   UPDATE_DOCS  1: also write the table into docs/PERFORMANCE.md
#   BENCH_TMPDIR where the daemons' directories go (default /var/tmp)
set -euo pipefail

LATENCY=${LATENCY:-1ms}
SIZE=${SIZE:-256M}
RUNTIME=${RUNTIME:-8}
UPDATE_DOCS=${UPDATE_DOCS:-0}
BENCH_NAME=cache-bench
source "$(dirname "$0")/lib.sh"
start_daemons --storage-latency "$LATENCY" --cache-size "$(($(numfmt --from=iec "$SIZE") * 2))"

# Two VMs: "on" with encryption at host, "off" without; one data disk per
# caching mode (LUN order: None, ReadOnly, ReadWrite).
for vm in on off; do
  for m in None ReadOnly ReadWrite; do
    hc disk create --name "$vm-$m" --size "$SIZE" >/dev/null
  done
  hc vm create --name "$vm" --os-disk-size 16M --encryption-at-host "$([[ $vm == on ]] && echo true || echo false)" \
    --data-disks "$vm-None:None,$vm-ReadOnly:ReadOnly,$vm-ReadWrite:ReadWrite" >/dev/null 2>&1
done

# fio_json JOB FILE RW DEPTH: one 4 KiB fio job (the suite's parameters at
# depth 32), JSON out.
fio_json() {
  local job=$1 file=$2 rw=$3 depth=$4
  fio --name="$job" --filename="$file" --size="$SIZE" --runtime="$RUNTIME" --time_based --direct=1 \
    --rw="$rw" --bs=4k --ioengine=libaio --iodepth="$depth" --fallocate=none --group_reporting \
    --output-format=json --output="$WORK/$job.json" >/dev/null 2>"$WORK/$job.err"
}
# summary JSON SIDE: "IOPS p99_us"
summary() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
t = open(sys.argv[1]).read()
d = json.loads(t[t.index("{"):])["jobs"][0][sys.argv[2]]
print("%.0f %.0f" % (d["iops"], d["clat_ns"]["percentile"]["99.000000"] / 1000))
EOF
}
dirty() { # VM DISK: the host cache's dirty bytes now, from the encryption report
  hc -o json vm encryption-report 2>/dev/null --name "$1" | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(next((e["dirtyBytes"] for e in r["entries"] if e["disk"] == sys.argv[1] and e["layer"] == "host cache"), 0))' "$2"
}

OUT=bench/results/cache-latency.md
mkdir -p bench/results
{
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) CPUs, kernel $(uname -r); $(fio --version)"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo " (with local changes)")"
  echo "- hostcryptd --storage-latency $LATENCY --cache-size $(($(numfmt --from=iec "$SIZE") * 2 >> 20))M; platform-key data disks of $SIZE, every block written and read once in random order before the jobs (warm cache); fio 4 KiB, libaio, O_DIRECT, $RUNTIME s per job"
  echo
  echo "IOPS (p99 completion latency in µs) of 4 KiB random reads and writes at queue depth 1, where each I/O waits for storage, and at depth 32, where many wait at once."
  echo
  echo "| encryption at host | caching | rand-read QD1 | rand-read QD32 | rand-write QD1 | rand-write QD32 | dirty after writes |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
} >"$OUT.tmp"
for vm in on off; do
  lun=0
  for m in None ReadOnly ReadWrite; do
    img=$WORK/mnt/$vm/data-$lun.img
    lun=$((lun + 1))
    say "$vm/$m: writing and reading every block once, in random order"
    for rw in randwrite randread; do
      fio --name="warm-$vm-$m-$rw" --filename="$img" --size="$SIZE" --direct=1 --rw="$rw" --bs=4k \
        --ioengine=libaio --iodepth=32 --fallocate=none --output-format=json \
        --output="$WORK/warm-$vm-$m-$rw.json" >/dev/null 2>"$WORK/warm-$vm-$m-$rw.err" ||
        die "warming $vm/$m failed: $(tail -n 2 "$WORK/warm-$vm-$m-$rw.err")"
    done
    cells=""
    for rw in randread randwrite; do
      side=read
      [[ $rw == randwrite ]] && side=write
      for depth in 1 32; do
        say "$vm/$m: $rw, queue depth $depth"
        fio_json "$vm-$m-$rw-$depth" "$img" "$rw" "$depth"
        read -r iops p99 <<<"$(summary "$WORK/$vm-$m-$rw-$depth.json" "$side")"
        cells+=" $iops ($p99) |"
      done
    done
    d=$(dirty "$vm" "$vm-$m" 2>/dev/null)
    echo "| $vm | $m |$cells $(numfmt --to=iec "$d") |" >>"$OUT.tmp"
  done
done
echo "- daemon peak RSS: $(awk '/^VmHWM:/ {print $2, $3}' "/proc/$DAEMON/status")" >>"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
cat "$OUT"
if [[ $UPDATE_DOCS == 1 ]]; then
  update_docs cache-table "$OUT"
fi
