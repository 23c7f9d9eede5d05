#!/usr/bin/env bash
# e2e_faults.sh LOCKSTEP BUILD_DIR - faults around checkpoints, end to end:
#  1. SIGKILL of the coordinator while it writes a checkpoint (a big model, so the write
#     takes a while; the temporary ckpt_*.h5.tmp.<pid> file names the writer): the job
#     ends non-zero, the previous checkpoint is intact, and --resume auto starts from it
#     and reaches the parameters of an uninterrupted run, bit for bit;
#  2. a checkpoint damaged on disk (a byte flipped inside a parameter's data, the file
#     truncated, a vocabulary word changed) is skipped by --resume auto with one warning,
#     the previous one is used, and the run ends with the uninterrupted run's parameters;
#  3. an unwritable run directory: --out below a regular file, a full file system (a
#     small tmpfs) and a read-only one: one clear error, a non-zero exit, earlier
#     checkpoints unchanged and no temporary file left;
#  4. --on-nan: skip runs to the end and every checkpoint holds finite numbers only; stop
#     ends the run at the bad step, and the checkpoints written before it are finite.
#     (e2e_errors.sh covers a NaN before the first checkpoint.)
set -uo pipefail
LOCKSTEP=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OPENBLAS_NUM_THREADS=1 LOCKSTEP_PROGRESS=lines
TMP=$(mktemp -d)
MNT=""
cleanup() {
    [ -n "$MNT" ] && umount "$MNT" 2> /dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
D=$HERE/data/desc_small
BASE=(train --model bow-classifier --data "$D/train.tsv" --min-count 1 --batch-size 16
      --threads 1 --seed 5 --log-every 1000)
fails=0
ok() { echo "ok   $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
finite() { # FILE...: every dataset of params/ and optim/ is finite
    /usr/bin/python3 - "$@" <<'EOF'
import sys, h5py, numpy as np
bad = []
for p in sys.argv[1:]:
    with h5py.File(p, "r") as f:
        def v(name, o):
            if isinstance(o, h5py.Dataset) and (name.startswith("params") or name.startswith("optim")):
                if not np.all(np.isfinite(o[()])):
                    bad.append(p + ":" + name)
        f.visititems(v)
print(" ".join(bad))
sys.exit(1 if bad else 0)
EOF
}
same_params() { /usr/bin/python3 "$HERE/ckpt_compare.py" "$1" "$2" --exact --optim > /dev/null; }
tmp_files() { compgen -G "$1/*.tmp.*" | wc -l; }

# ---- 1. SIGKILL of the coordinator while it writes a checkpoint ------------------------------
BIG=("${BASE[@]}" --dim 2000 --steps 12 --ckpt-every 4)
mpirun -np 2 "$LOCKSTEP" "${BIG[@]}" --out "$TMP/big_full" > "$TMP/big_full.log" 2>&1 ||
    fail "uninterrupted run with --dim 2000"
killed=""
for attempt in 1 2 3; do
    rm -rf "$TMP/big"
    mpirun -np 2 "$LOCKSTEP" "${BIG[@]}" --out "$TMP/big" > "$TMP/big.log" 2>&1 &
    job=$!
    # wait until a checkpoint exists and the writer of the next one has its temporary file
    victim=""
    for _ in $(seq 1 6000); do
        if [ -f "$TMP/big/ckpt_00000004.h5" ]; then
            t=$(compgen -G "$TMP/big/ckpt_*.h5.tmp.*" | head -1)
            if [ -n "$t" ]; then victim=${t##*.tmp.}; break; fi
        fi
        kill -0 $job 2> /dev/null || break
        sleep 0.01
    done
    [ -n "$victim" ] && kill -KILL "$victim" 2> /dev/null
    wait $job
    status=$?
    prev=$(cd "$TMP/big" && ls ckpt_*.h5 2> /dev/null | sort | tail -1)
    if [ -n "$victim" ] && [ $status -ne 0 ] && [ -n "$(compgen -G "$TMP/big/*.tmp.$victim")" ]; then
        killed=$(basename "$t" | sed 's/\.tmp\..*//')
        break
    fi
    echo "     (attempt $attempt: the write finished before the kill landed; again)"
done
if [ -n "$killed" ]; then
    ok "SIGKILL of rank 0 (pid $victim) while writing $killed: job exit $status," \
       "$(tmp_files "$TMP/big") temporary file left, newest complete checkpoint $prev"
    [ ! -e "$TMP/big/$killed" ] && ok "no $killed under its final name" ||
        fail "$killed exists although its writer was killed"
    "$LOCKSTEP" info "$TMP/big/$prev" > "$TMP/info.txt" 2>&1 &&
        grep -q "checksums: verified" "$TMP/info.txt" &&
        ok "$prev intact (checksums verified)" || fail "$prev damaged: $(tail -1 "$TMP/info.txt")"
    mpirun -np 2 "$LOCKSTEP" "${BIG[@]}" --out "$TMP/big" --resume auto > "$TMP/big2.log" 2>&1 ||
        fail "resume after the kill: $(grep error "$TMP/big2.log")"
    grep -q "resumed from $TMP/big/$prev" "$TMP/big2.log" && ok "--resume auto chose $prev" ||
        fail "resume did not start from $prev: $(grep -i resumed "$TMP/big2.log")"
    same_params "$TMP/big_full/ckpt_00000012.h5" "$TMP/big/ckpt_00000012.h5" &&
        ok "resumed run = uninterrupted run, bit for bit" || fail "resumed run differs"
else
    fail "could not kill a checkpoint writer mid-write in 3 attempts"
fi

# ---- 2. checkpoints damaged on disk ----------------------------------------------------------
SMALL=("${BASE[@]}" --dim 16 --ckpt-every 10 --keep 5)
mpirun -np 2 "$LOCKSTEP" "${SMALL[@]}" --steps 40 --out "$TMP/ref" > /dev/null 2>&1 ||
    fail "uninterrupted 40-step run"
mpirun -np 2 "$LOCKSTEP" "${SMALL[@]}" --steps 30 --out "$TMP/dmg0" > /dev/null 2>&1 ||
    fail "30-step run"
damage() { # KIND FILE
    /usr/bin/python3 - "$1" "$2" <<'EOF'
import os, sys, h5py
kind, path = sys.argv[1], sys.argv[2]
if kind == "flip":
    with h5py.File(path, "r") as f:
        off = f["params/embedding/weight"].id.get_offset()
    with open(path, "r+b") as g:
        g.seek(off + 1000)
        b = g.read(1)
        g.seek(off + 1000)
        g.write(bytes([b[0] ^ 0x20]))
elif kind == "truncate":
    os.truncate(path, os.path.getsize(path) // 2)
elif kind == "word":  # a vocabulary word in HDF5's global heap, same length
    data = open(path, "rb").read()
    with h5py.File(path, "r") as f:
        words = [w.encode() for w in f["vocab/src"].asstr()[:300]]
    w = max((w for w in words if data.count(w) == 1), key=len)
    i = data.index(w) + len(w) // 2
    data = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
    open(path, "wb").write(data)
EOF
}
for kind in flip truncate word; do
    rm -rf "$TMP/dmg"
    cp -r "$TMP/dmg0" "$TMP/dmg"
    damage $kind "$TMP/dmg/ckpt_00000030.h5" || { fail "could not damage ($kind)"; continue; }
    mpirun -np 2 "$LOCKSTEP" "${SMALL[@]}" --steps 40 --out "$TMP/dmg" --resume auto \
        > "$TMP/dmg.out" 2> "$TMP/dmg.err"
    status=$?
    warn=$(grep -c "lockstep: warning: skipping corrupted checkpoint $TMP/dmg/ckpt_00000030.h5: " "$TMP/dmg.err")
    if [ $status -eq 0 ] && [ "$warn" -eq 1 ] &&
       grep -q "resumed from $TMP/dmg/ckpt_00000020.h5 at step 20" "$TMP/dmg.out"; then
        ok "damaged newest checkpoint ($kind) skipped: $(grep -o 'ckpt_00000030.h5: .*' "$TMP/dmg.err" | cut -c1-110)"
    else
        fail "damaged checkpoint ($kind): exit $status, $warn warnings"; head -3 "$TMP/dmg.err"
    fi
    same_params "$TMP/ref/ckpt_00000040.h5" "$TMP/dmg/ckpt_00000040.h5" &&
        ok "  ... and the run continued from step 20 to the uninterrupted parameters" ||
        fail "run after skipping the $kind checkpoint differs"
done
# an explicit --resume of a damaged file is refused, naming the dataset
cp "$TMP/dmg0/ckpt_00000030.h5" "$TMP/bad.h5"
damage flip "$TMP/bad.h5"
mpirun -np 1 "$LOCKSTEP" "${SMALL[@]}" --steps 40 --out "$TMP/x" --resume "$TMP/bad.h5" > /dev/null 2> "$TMP/x.err"
status=$?
[ $status -ne 0 ] && grep -q "lockstep: error: .*bad.h5: /params/embedding/weight has checksum .*(corrupted)" "$TMP/x.err" &&
    ok "--resume of a damaged file refused: $(grep error "$TMP/x.err" | cut -c1-120)" ||
    fail "--resume of a damaged file: exit $status: $(cat "$TMP/x.err")"

# ---- 3. unwritable run directories -----------------------------------------------------------
expect_error() { # NAME PATTERN args...: non-zero exit and exactly one error line matching
    local name=$1 pat=$2; shift 2
    timeout 120 mpirun -np 2 "$LOCKSTEP" "$@" > "$TMP/o" 2> "$TMP/e"
    local status=$? n
    n=$(grep -c "lockstep: error:" "$TMP/e")
    if [ $status -ne 0 ] && [ $status -ne 124 ] && [ "$n" -eq 1 ] && grep -q "lockstep: error: .*$pat" "$TMP/e"; then
        ok "$name: $(grep 'lockstep: error:' "$TMP/e" | cut -c1-150)"
    else
        fail "$name (exit $status, $n error lines, want /$pat/)"; head -3 "$TMP/e"
    fi
}
touch "$TMP/afile"
expect_error "--out below a regular file" "afile.*Not a directory" "${SMALL[@]}" --steps 5 --out "$TMP/afile/run"
expect_error "--out in /proc" "/proc/lockstep-run" "${SMALL[@]}" --steps 5 --out /proc/lockstep-run
mkdir -p "$TMP/mnt"
if mount -t tmpfs -o size=8m tmpfs "$TMP/mnt" 2> /dev/null; then
    MNT=$TMP/mnt
    R=$MNT/run
    FULL=("${BASE[@]}" --dim 64 --ckpt-every 5 --keep 5)   # about 3 MB per checkpoint; 8 MB hold two plus the data
    mpirun -np 2 "$LOCKSTEP" "${FULL[@]}" --steps 5 --out "$R" > /dev/null 2>&1 || fail "run on the tmpfs"
    before=$(md5sum "$R/ckpt_00000005.h5")
    # fill the file system up to about 1 MB: the next checkpoint cannot fit
    avail=$(df -k --output=avail "$MNT" | tail -1)
    dd if=/dev/zero of="$MNT/filler" bs=1k count=$((avail - 1024)) 2> /dev/null
    expect_error "disk full while writing a checkpoint" "ckpt_00000010.h5.*No space left on device" \
        "${FULL[@]}" --steps 10 --out "$R" --resume auto
    [ "$(md5sum "$R/ckpt_00000005.h5")" = "$before" ] && [ "$(tmp_files "$R")" -eq 0 ] &&
        [ ! -e "$R/ckpt_00000010.h5" ] &&
        ok "  ... earlier checkpoint unchanged, no temporary file, no ckpt_00000010.h5" ||
        fail "disk full: run directory damaged ($(ls "$R"))"
    rm -f "$MNT/filler"
    mount -o remount,ro "$MNT"
    expect_error "read-only file system" "Read-only file system" \
        "${FULL[@]}" --steps 10 --out "$R" --resume auto
    [ "$(md5sum "$R/ckpt_00000005.h5")" = "$before" ] && ok "  ... earlier checkpoint unchanged" ||
        fail "read-only: checkpoint changed"
    mount -o remount,rw "$MNT"
    mpirun -np 2 "$LOCKSTEP" "${FULL[@]}" --steps 10 --out "$R" --resume auto > /dev/null 2>&1 &&
        [ -f "$R/ckpt_00000010.h5" ] && ok "with space again, the same command resumes and finishes" ||
        fail "resume after freeing space"
else
    echo "SKIP tmpfs (mount not permitted here): disk-full and read-only cases not run"
fi

# ---- 4. --on-nan ---------------------------------------------------------------------------
NAN=("${BASE[@]}" --dim 8 --lr 1e30 --optimizer sgd --steps 12 --ckpt-every 2 --keep 10)
mpirun -np 2 "$LOCKSTEP" "${NAN[@]}" --on-nan skip --out "$TMP/skip" > /dev/null 2> "$TMP/skip.err"
status=$?
nskip=$(grep -c "step skipped" "$TMP/skip.err")
if [ $status -eq 0 ] && [ "$nskip" -gt 0 ] && [ -f "$TMP/skip/ckpt_00000012.h5" ] &&
   bad=$(finite "$TMP/skip"/ckpt_*.h5); then
    ok "--on-nan skip: $nskip steps skipped, ran to step 12, every checkpoint finite"
else
    fail "--on-nan skip: exit $status, $nskip skipped, non-finite: ${bad:-}"
fi
mpirun -np 2 "$LOCKSTEP" "${NAN[@]}" --ckpt-every 1 --on-nan stop --out "$TMP/stop" > /dev/null 2> "$TMP/stop.err"
status=$?
nstep=$(grep -o "step [0-9]*: non-finite" "$TMP/stop.err" | grep -o "[0-9]*")
last=$(cd "$TMP/stop" && ls ckpt_*.h5 2> /dev/null | sort | tail -1)
if [ $status -ne 0 ] && [ -n "$nstep" ] && [ -n "$last" ] && bad=$(finite "$TMP/stop"/ckpt_*.h5) &&
   [ "$(echo "$last" | sed 's/ckpt_0*\([0-9][0-9]*\)\.h5/\1/')" -le "$nstep" ]; then
    ok "--on-nan stop: stopped at step $nstep, checkpoints up to $last, all finite"
else
    fail "--on-nan stop: exit $status, step '${nstep}', last '$last', non-finite: ${bad:-}"
fi

if [ "$fails" -ne 0 ]; then echo "e2e_faults: $fails check(s) failed"; exit 1; fi
echo "e2e_faults: all checks passed"
