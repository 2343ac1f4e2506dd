#!/usr/bin/env bash
# fio-suite.sh — the five fio jobs every target of the benchmark runs.
#
# Usage: fio-suite.sh TARGET LABEL [OUTDIR]
#
#   TARGET  a directory on the file system under test (the suite creates and
#           uses TARGET/fio-test.img), an existing file such as a disk image
#           served by hostcryptd (used as it is: never created, truncated or
#           grown, only written in full before the jobs), or rbd:POOL/IMAGE,
#           an existing RBD image that fio reaches through librbd itself
#           (--ioengine=rbd, as QEMU does; the cluster from $CEPH_CONF, the
#           cephx user from RBD_CLIENT, default admin).
#   LABEL   the target's name, the first column of every result line.
#   OUTDIR  where fio's JSON, stderr and command line per job go
#           (default: ./fio-results/LABEL-DATE).
#
# Environment, all optional:
#   RUNTIME      seconds per job (default 8)
#   SIZE         size of the test file (default 1G)
#   JOBS         the jobs to run, in order (default: the five below; also
#                rand-read-4k-qd1 and rand-write-4k-qd1, 4 KiB random reads
#                and writes at queue depth 1, where each I/O waits for the
#                storage and a host cache shows what it saves)
#   WARM         1: before a job that reads at random, read the whole file
#                once in random order, 4 KiB at a time, when it has been
#                written since the last such pass, so that a host cache is
#                warm (sequential I/O goes around it); 0 (default): do not
#   DAEMON_PIDS  PIDs of the daemon(s) serving TARGET: their CPU time during
#                each job is reported (daemon_cpu_s, daemon_us_per_io) and
#                their peak resident memory (daemon_hwm_kib)
#   PREP_PASSES  how many times the file is written in full before the jobs
#                (default 1; 2 rewrites every block once before the first job)
#   DROP_CACHES  1 (default): sync and drop the page cache before each job
#   WAIT_IDLE    wait up to this many seconds before each job for the whole
#                machine to be less than IDLE_BUSY_PCT (default 15) % busy;
#                0 (default) does not wait
#   IOPS_LOG     log each job's IOPS averaged over every IOPS_LOG ms, in
#                OUTDIR/JOB_iops.1.log (unset: no log)
#   FIO          the fio binary (default fio)
#   COST_PIDS    other processes whose CPU time during each job is reported
#                per I/O, as NAME=PID words (e.g. "osd=123 mon=456": fields
#                osd_us_per_io, mon_us_per_io); fio's own CPU time (all its
#                threads and processes, librbd's among them for an RBD image)
#                is always reported as fio_us_per_io
#   OSD_PERF     a command printing a Ceph OSD's `perf dump` (e.g. "ceph
#                daemon osd.0 perf dump"): the RADOS operations and bytes it
#                served during each job are reported per I/O (osd_r, osd_w,
#                osd_rw: reads, writes, and operations doing both, such as a
#                write asserting that its object exists; osd_r_kib, osd_w_kib)
#
# Output, one line per job on stdout:
#   LABEL JOB MiB/s IOPS p99_us key=value...
# MiB/s and IOPS count reads and writes together; p99_us is fio's completion
# latency p99 (for the mixed job the worse of read and write). The key=value
# fields: mode=direct|buffered, ios (I/Os completed), the read and write
# split for the mixed job, fio's own CPU use, the daemon's CPU, and the whole
# machine's busy and steal percentages during the job. Progress goes to
# stderr. The exit status is 0 when every job produced a result.
#
# Each job runs with O_DIRECT (an RBD image: through librbd, no page cache). A file system that refuses O_DIRECT (EINVAL)
# gets the job again with buffered I/O (plus an fsync at the end of writing
# jobs) and the line says mode=buffered.
set -euo pipefail

if (($# < 2 || $# > 3)); then
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
  exit 2
fi

TARGET=${1%/}
LABEL=$2
OUTDIR=${3:-fio-results/$LABEL-$(date +%Y%m%d-%H%M%S)}
RUNTIME=${RUNTIME:-8}
SIZE=${SIZE:-1G}
DROP_CACHES=${DROP_CACHES:-1}
PREP_PASSES=${PREP_PASSES:-1}
WAIT_IDLE=${WAIT_IDLE:-0}
IDLE_BUSY_PCT=${IDLE_BUSY_PCT:-15}
DAEMON_PIDS=${DAEMON_PIDS:-}
COST_PIDS=${COST_PIDS:-}
OSD_PERF=${OSD_PERF:-}
FIO=${FIO:-fio}
ALL_JOBS="seq-write-1M seq-read-1M rand-write-4k rand-read-4k rand-rw-4k"
QD1_JOBS="rand-read-4k-qd1 rand-write-4k-qd1"
JOBS=${JOBS:-$ALL_JOBS}
WARM=${WARM:-0}
RBD_CLIENT=${RBD_CLIENT:-admin}

say() { printf '[fio-suite %s %s] %s\n' "$(date +%H:%M:%S)" "$LABEL" "$*" >&2; }
fail() { say "error: $*"; exit 1; }

# The parameters that make each job what it is.
job_params() {
  case $1 in
  seq-write-1M) echo "--rw=write --bs=1M --ioengine=psync" ;;
  seq-read-1M) echo "--rw=read --bs=1M --ioengine=psync" ;;
  rand-write-4k) echo "--rw=randwrite --bs=4k --ioengine=libaio --iodepth=32" ;;
  rand-read-4k) echo "--rw=randread --bs=4k --ioengine=libaio --iodepth=32" ;;
  rand-rw-4k) echo "--rw=randrw --rwmixread=70 --bs=4k --ioengine=libaio --iodepth=16 --numjobs=2" ;;
  rand-read-4k-qd1) echo "--rw=randread --bs=4k --ioengine=libaio --iodepth=1" ;;
  rand-write-4k-qd1) echo "--rw=randwrite --bs=4k --ioengine=libaio --iodepth=1" ;;
  *) return 1 ;;
  esac
}

for job in $JOBS; do
  job_params "$job" >/dev/null || fail "unknown job $job (known: $ALL_JOBS $QD1_JOBS)"
done
command -v "$FIO" >/dev/null || fail "fio is not installed"
command -v python3 >/dev/null || fail "python3 is not installed (it reads fio's JSON)"

WANT=$(numfmt --from=iec "$SIZE")
RBD=0
if [[ $TARGET == rbd:* ]]; then
  # fio opens the image through librbd: no file, no kernel, no page cache.
  FILE=$TARGET
  RBD_SPEC=${TARGET#rbd:}
  [[ $RBD_SPEC == ?*/?* ]] || fail "$TARGET: want rbd:POOL/IMAGE"
  IMAGE=1 RBD=1
  command -v rbd >/dev/null || fail "the rbd tool is missing (scripts/deps.sh ceph installs it)"
  "$FIO" --enghelp=rbd >/dev/null 2>&1 || fail "this fio has no rbd engine (Debian's has it with librbd1)"
  have=$(timeout 60 rbd --id "$RBD_CLIENT" info --format json "$RBD_SPEC" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["size"])') ||
    fail "cannot read the size of RBD image $RBD_SPEC"
  ((have >= WANT)) || fail "RBD image $RBD_SPEC holds $have bytes, less than SIZE=$SIZE"
elif [[ -d $TARGET ]]; then
  FILE=$TARGET/fio-test.img
  IMAGE=0
elif [[ -f $TARGET || -b $TARGET ]]; then
  FILE=$TARGET
  IMAGE=1
  have=$(stat -L -c %s "$FILE")
  [[ -b $FILE ]] && have=$(blockdev --getsize64 "$FILE")
  ((have >= WANT)) || fail "$FILE holds $have bytes, less than SIZE=$SIZE"
else
  fail "$TARGET is neither a directory nor a file"
fi
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches 2>/dev/null ||
    say "warning: cannot drop the page cache (not root?)"
}

# CPU clock ticks (user + system, all threads) used so far by DAEMON_PIDS.
daemon_ticks() {
  local pid sum=0 rest
  local -a f
  [[ -n $DAEMON_PIDS ]] || return 0
  for pid in $DAEMON_PIDS; do
    rest=$(<"/proc/$pid/stat") || { say "warning: daemon $pid is gone"; return 0; }
    # The command name may hold spaces; count fields after its ")".
    read -r -a f <<<"${rest##*) }"
    sum=$((sum + f[11] + f[12]))
  done
  echo "$sum"
}

# Sum of the daemons' peak resident set sizes, KiB.
daemon_hwm() {
  local pid sum=0 kib
  [[ -n $DAEMON_PIDS ]] || return 0
  for pid in $DAEMON_PIDS; do
    kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || return 0
    sum=$((sum + ${kib:-0}))
  done
  echo "$sum"
}

# CPU clock ticks of each COST_PIDS process, as NAME=TICKS words.
cost_ticks() {
  local w pid rest
  local -a f
  for w in $COST_PIDS; do
    pid=${w#*=}
    rest=$(<"/proc/$pid/stat") 2>/dev/null || { say "warning: ${w%%=*} ($pid) is gone"; continue; }
    read -r -a f <<<"${rest##*) }"
    printf '%s=%d ' "${w%%=*}" $((f[11] + f[12]))
  done
}

# Sets CHILD_CPU to the CPU seconds (user + system) of this shell's
# finished children so far. Not in a subshell: a forked shell starts its
# children's count at zero.
children_cpu() {
  times >"$OUTDIR/times.txt"
  CHILD_CPU=$(awk 'NR == 2 { gsub("s", ""); for (i = 1; i <= 2; i++) { split($i, a, "m"); s += a[1] * 60 + a[2] } }
    END { printf "%.3f", s }' "$OUTDIR/times.txt")
}

# The OSD's counters of OSD_PERF, as one JSON object on one line.
osd_counters() {
  [[ -n $OSD_PERF ]] || return 0
  # shellcheck disable=SC2086 # OSD_PERF is a command line
  timeout 30 $OSD_PERF 2>/dev/null | python3 -c 'import json, sys
o = json.load(sys.stdin)["osd"]
print(json.dumps({k: o[k] for k in ("op_r", "op_w", "op_rw", "op_r_out_bytes", "op_w_in_bytes", "op_rw_in_bytes", "op_rw_out_bytes")}))' ||
    say "warning: cannot read the OSD's counters ($OSD_PERF)"
}

# cost_fields IOS COST0 COST1 OSD0 OSD1 FIO0 FIO1: the key=value fields of
# what fio, the processes of COST_PIDS and the OSD spent per I/O.
cost_fields() {
  python3 - "$@" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
ios, c0, c1, o0, o1, f0, f1, hz = sys.argv[1:]
ios = max(int(ios), 1)
out = ["fio_us_per_io=%.1f" % (1e6 * (float(f1) - float(f0)) / ios)]
a = dict(w.split("=") for w in c0.split())
for w in c1.split():
    k, v = w.split("=")
    if k in a:
        out.append("%s_us_per_io=%.1f" % (k, 1e6 * (int(v) - int(a[k])) / int(hz) / ios))
if o0 and o1:
    x, y = json.loads(o0), json.loads(o1)
    d = {k: y[k] - x[k] for k in x}
    out += ["osd_r=%.2f" % (d["op_r"] / ios), "osd_w=%.2f" % (d["op_w"] / ios), "osd_rw=%.2f" % (d["op_rw"] / ios),
            "osd_r_kib=%.2f" % ((d["op_r_out_bytes"] + d["op_rw_out_bytes"]) / 1024 / ios),
            "osd_w_kib=%.2f" % ((d["op_w_in_bytes"] + d["op_rw_in_bytes"]) / 1024 / ios)]
print(" ".join(out))
EOF
}

# "busy steal total" jiffies of the whole machine.
machine_ticks() {
  awk '$1 == "cpu" { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, $9, t }' /proc/stat
}

# busy% and steal% between two machine_ticks samples.
machine_pct() {
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x); split(b, y); t = y[3] - x[3]; if (t <= 0) t = 1
    printf "%.0f %.1f", 100 * (y[1] - x[1]) / t, 100 * (y[2] - x[2]) / t }'
}

# Waits (at most WAIT_IDLE s) for a quiet machine; prints the last busy %.
settle() {
  local start=$SECONDS a b pct
  while :; do
    a=$(machine_ticks); sleep 2; b=$(machine_ticks)
    read -r pct _ <<<"$(machine_pct "$a" "$b")"
    if ((pct < IDLE_BUSY_PCT)) || ((SECONDS - start >= WAIT_IDLE)); then break; fi
  done
  ((pct < IDLE_BUSY_PCT)) || say "warning: machine still ${pct}% busy, running anyway"
  echo "$pct"
}

# where_args: the fio arguments naming the file or the RBD image.
where_args() {
  if ((RBD)); then
    echo "--ioengine=rbd --pool=${RBD_SPEC%%/*} --rbdname=${RBD_SPEC#*/} --clientname=$RBD_CLIENT"
  else
    echo "--filename=$FILE"
  fi
}

# engine_args JOB-PARAMS...: the job's parameters, its engine replaced by
# librbd's for an RBD image (the queue depth stays: librbd is asynchronous).
engine_args() {
  local a
  for a in "$@"; do
    ((RBD)) && [[ $a == --ioengine=* ]] && continue
    echo "$a"
  done
  where_args | tr ' ' '\n'
}

# Writes the whole test file once so that reads find real, allocated data.
# An image file is overwritten in place; a new file is created.
prep() {
  local start=$SECONDS
  local -a args
  mapfile -t args < <(engine_args --ioengine=psync)
  args+=(--name=prep --size="$SIZE" --rw=write --bs=1M --output-format=json --output="$OUTDIR/prep.json")
  ((IMAGE)) && args+=(--fallocate=none)
  local pass
  for ((pass = 1; pass <= PREP_PASSES; pass++)); do
    say "writing $FILE in full ($SIZE)$( ((PREP_PASSES == 1)) || echo ", pass $pass of $PREP_PASSES")"
    if ((RBD)); then
      "$FIO" "${args[@]}" 2>"$OUTDIR/prep.err" || fail "writing $FILE failed: $(tail -n 3 "$OUTDIR/prep.err")"
      continue
    fi
    if ! "$FIO" "${args[@]}" --direct=0 --end_fsync=1 2>"$OUTDIR/prep.err"; then
      # Some daemons take only aligned direct writes.
      "$FIO" "${args[@]}" --direct=1 2>>"$OUTDIR/prep.err" ||
        fail "writing $FILE failed: $(tail -n 3 "$OUTDIR/prep.err")"
    fi
  done
  if ((RBD)); then
    say "written in $((SECONDS - start)) s"
    return 0
  fi
  local have
  have=$(stat -L -c %s "$FILE")
  ((have >= WANT)) || fail "after writing, $FILE holds $have bytes, not $WANT"
  say "written in $((SECONDS - start)) s"
}

# Reads the whole file once in random order, 4 KiB at a time (fio's random
# map visits every block once), at queue depth 32.
warm() {
  local start=$SECONDS
  local -a args
  mapfile -t args < <(engine_args --ioengine=libaio)
  args+=(--name=warm --size="$SIZE" --rw=randread --bs=4k --iodepth=32 --output-format=json
    --output="$OUTDIR/warm-$1.json")
  ((RBD)) || args+=(--direct=1)
  ((IMAGE)) && args+=(--fallocate=none)
  say "reading $FILE once in random order before $1"
  timeout --kill-after=20 900 "$FIO" "${args[@]}" 2>"$OUTDIR/warm-$1.err" ||
    fail "reading $FILE before $1 failed: $(tail -n 3 "$OUTDIR/warm-$1.err")"
  say "read in $((SECONDS - start)) s"
}

# fio_job JOB direct|buffered: runs one job, fio's JSON in OUTDIR/JOB.json.
fio_job() {
  local job=$1 mode=$2 out=$OUTDIR/$1
  local -a params args
  read -r -a params <<<"$(job_params "$job")"
  mapfile -t args < <(engine_args "${params[@]}")
  args+=(--name="$job" --size="$SIZE" --runtime="$RUNTIME" --time_based
    --group_reporting --output-format=json --output="$out.json")
  ((RBD)) || args+=(--invalidate=1)
  # IOPS_LOG=MSEC: fio logs the job's IOPS averaged over every MSEC
  # milliseconds, in OUTDIR/JOB_iops.1.log (to see a job change pace).
  [[ -n ${IOPS_LOG:-} ]] && args+=(--write_iops_log="$out" --log_avg_msec="$IOPS_LOG")
  ((IMAGE)) && args+=(--fallocate=none)
  if ((RBD)); then
    : # librbd bypasses the page cache: the same as O_DIRECT
  elif [[ $mode == direct ]]; then
    args+=(--direct=1)
  else
    args+=(--direct=0)
    [[ $job == *write* || $job == *rw* ]] && args+=(--end_fsync=1)
  fi
  printf '%q ' "$FIO" "${args[@]}" >"$out.cmd"
  echo >>"$out.cmd"
  # A wedged daemon must not hang the whole run.
  timeout --kill-after=20 $((RUNTIME + 240)) "$FIO" "${args[@]}" 2>"$out.err"
}

# Did the last attempt of JOB fail because O_DIRECT was refused?
refused_direct() {
  grep -qiE 'invalid argument|einval|direct' "$OUTDIR/$1.err" 2>/dev/null && return 0
  [[ -s $OUTDIR/$1.json ]] && python3 - "$OUTDIR/$1.json" <<'EOF' 2>/dev/null
import json, sys
text = open(sys.argv[1], errors="replace").read()
sys.exit(0 if json.loads(text[text.index("{"):])["jobs"][0].get("error") == 22 else 1)
EOF
}

# Prints "MiB/s IOPS p99_us ios key=value..." from one fio JSON file.
summarise() {
  python3 - "$1" <<'EOF'
import json, sys
text = open(sys.argv[1], errors="replace").read()
job = json.loads(text[text.index("{"):])["jobs"][0]  # fio may warn before the JSON
def p99(side):
    d = job[side]
    if d["io_bytes"] == 0:
        return None
    return d.get("clat_ns", {}).get("percentile", {}).get("99.000000", 0) / 1000
r, w = job["read"], job["write"]
lat = [x for x in (p99("read"), p99("write")) if x is not None]
fields = ["%.1f" % ((r["bw_bytes"] + w["bw_bytes"]) / 2**20), "%.0f" % (r["iops"] + w["iops"]),
          "%.1f" % max(lat + [0]), str(r["total_ios"] + w["total_ios"])]
if len(lat) == 2:
    fields += ["r_iops=%.0f" % r["iops"], "w_iops=%.0f" % w["iops"],
               "r_p99_us=%.1f" % lat[0], "w_p99_us=%.1f" % lat[1]]
fields += ["fio_usr=%.1f%%" % job["usr_cpu"], "fio_sys=%.1f%%" % job["sys_cpu"],
           "fio_err=%d" % job.get("error", 0)]
print(" ".join(fields))
EOF
}

run_one() {
  local job=$1 mode=direct rc=0 busy_before=- t0 t1 m0 m1 c0 c1 o0 o1 f0 f1
  ((WAIT_IDLE > 0)) && busy_before=$(settle)%
  [[ $DROP_CACHES == 1 ]] && drop_caches
  o0=$(osd_counters)
  t0=$(daemon_ticks); m0=$(machine_ticks); c0=$(cost_ticks); children_cpu; f0=$CHILD_CPU
  fio_job "$job" direct || rc=$?
  if ((rc != 0)) && ((!RBD)) && refused_direct "$job"; then
    say "$job: O_DIRECT refused, running it buffered"
    for ext in json err cmd; do
      [[ -e $OUTDIR/$job.$ext ]] && mv "$OUTDIR/$job.$ext" "$OUTDIR/$job.direct-refused.$ext"
    done
    mode=buffered
    drop_caches
    o0=$(osd_counters)
    t0=$(daemon_ticks); m0=$(machine_ticks); c0=$(cost_ticks); children_cpu; f0=$CHILD_CPU
    rc=0
    fio_job "$job" buffered || rc=$?
  fi
  children_cpu; f1=$CHILD_CPU; t1=$(daemon_ticks); m1=$(machine_ticks); c1=$(cost_ticks)
  o1=$(osd_counters)
  if ((rc != 0)); then
    say "$job failed (exit $rc): $(tail -n 3 "$OUTDIR/$job.err" | tr '\n' ' ')"
    echo "$LABEL $job FAILED - - mode=$mode rc=$rc"
    return 1
  fi
  local summary bw iops p99 ios rest cpu=n/a per_io=n/a busy steal
  if ! summary=$(summarise "$OUTDIR/$job.json"); then
    echo "$LABEL $job FAILED - - mode=$mode unreadable-json"
    return 1
  fi
  read -r bw iops p99 ios rest <<<"$summary"
  if [[ -n $t0 && -n $t1 ]]; then
    read -r cpu per_io <<<"$(awk -v a="$t0" -v b="$t1" -v hz="$(getconf CLK_TCK)" -v n="$ios" \
      'BEGIN { s = (b - a) / hz; printf "%.2f %.1f", s, (n > 0 ? 1e6 * s / n : 0) }')"
  fi
  read -r busy steal <<<"$(machine_pct "$m0" "$m1")"
  echo "$LABEL $job $bw $iops $p99 mode=$mode ios=$ios $rest daemon_cpu_s=$cpu" \
    "daemon_us_per_io=$per_io daemon_hwm_kib=$(daemon_hwm)" \
    "sys_busy=$busy% steal=$steal% pre_busy=$busy_before $(cost_fields "$ios" "$c0" "$c1" "$o0" "$o1" "$f0" "$f1")"
}

main() {
  {
    echo "label: $LABEL"
    echo "file: $FILE"
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "kernel: $(uname -r)"
    echo "fio: $("$FIO" --version)"
    echo "cpus: $(nproc)"
    echo "runtime_s: $RUNTIME size: $SIZE prep_passes: $PREP_PASSES drop_caches: $DROP_CACHES wait_idle: $WAIT_IDLE"
    echo "daemon_pids: ${DAEMON_PIDS:-none}"
    findmnt -T "$FILE" 2>/dev/null || true
  } >"$OUTDIR/env.txt"
  say "jobs: $JOBS; ${RUNTIME}s each; results in $OUTDIR"
  prep
  echo "# LABEL JOB MiB/s IOPS p99_us key=value..."
  local job line failed=0 written=1
  : >"$OUTDIR/summary.txt"
  for job in $JOBS; do
    if ((WARM && written)) && [[ $job == rand-read* || $job == rand-rw* ]]; then
      warm "$job"
      written=0
    fi
    [[ $job == *write* || $job == *rw* ]] && written=1
    say "$job"
    line=$(run_one "$job") || failed=$((failed + 1))
    echo "$line" | tee -a "$OUTDIR/summary.txt"
  done
  say "done, $failed job(s) failed"
  ((failed == 0))
}

main
