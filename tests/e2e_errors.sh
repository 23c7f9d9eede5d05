#!/usr/bin/env bash
# e2e_errors.sh LOCKSTEP BUILD_DIR - bad input gives one clear error line and a non-zero
# exit, on 1 and on 2 ranks, and never damages the run directory.
set -uo pipefail
LOCKSTEP=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OPENBLAS_NUM_THREADS=1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
D=$HERE/data/desc_small
BASE=(train --model bow-classifier --data "$D/train.tsv" --valid "$D/valid.tsv" --dim 8
      --batch-size 16 --min-count 1 --threads 1 --log-every 1000)
fails=0
# expect NAME NP PATTERN args... : exit status non-zero, exactly one line on stderr matching
# "lockstep: error: .*PATTERN", in a bounded time (no hang).
expect() {
    local name=$1 np=$2 pat=$3; shift 3
    local status
    timeout 60 mpirun -np "$np" "$LOCKSTEP" "$@" > "$TMP/out" 2> "$TMP/err"
    status=$?
    local lines
    lines=$(grep -c "lockstep: error:" "$TMP/err")
    if [ $status -ne 0 ] && [ $status -ne 124 ] && [ "$lines" -eq 1 ] &&
       grep -q "lockstep: error: .*$pat" "$TMP/err"; then
        echo "ok   $name: $(grep 'lockstep: error:' "$TMP/err")"
    else
        echo "FAIL $name (exit $status, $lines error lines, want /$pat/):"
        head -5 "$TMP/err"
        fails=$((fails + 1))
    fi
}

for np in 1 2; do
    expect "unknown key ($np ranks)" $np "unknown key 'hiden'" "${BASE[@]}" --out "$TMP/a" --hiden 3
    expect "malformed number" $np "steps.*abc" "${BASE[@]}" --out "$TMP/a" --steps abc
    expect "bad choice" $np "optimizer.*rmsprop" "${BASE[@]}" --out "$TMP/a" --optimizer rmsprop --steps 1
    expect "bad matmul precision" $np "matmul.*fp16" "${BASE[@]}" --out "$TMP/a" --matmul fp16 --steps 1
    expect "unknown model" $np "unknown model 'gpt5'" train --model gpt5 --data x
    expect "missing corpus" $np "nope.tsv" train --model bow-classifier --data "$TMP/nope.tsv" --out "$TMP/a"
done
printf 'doc\tgood line\nthis line has no label\n' > "$TMP/bad.tsv"
expect "malformed corpus names file and line" 2 "bad.tsv:2" train --model bow-classifier --data "$TMP/bad.tsv" --out "$TMP/b" --min-count 1
printf 'doc\tgood line\ndoc\tbad \xff\xfe utf8\n' > "$TMP/bad8.tsv"
expect "invalid UTF-8" 2 "bad8.tsv:2" train --model bow-classifier --data "$TMP/bad8.tsv" --out "$TMP/b" --min-count 1
printf 'steps = 3\nnonsense_key = 4\n' > "$TMP/c.cfg"
expect "config file names file:line" 1 "c.cfg:2: unknown key 'nonsense_key'" "${BASE[@]}" --out "$TMP/a" --config "$TMP/c.cfg"
expect "missing config file" 1 "nofile.cfg" "${BASE[@]}" --out "$TMP/a" --config "$TMP/nofile.cfg"

# A run, then resuming it with a different architecture is refused and changes nothing.
mpirun -np 2 "$LOCKSTEP" "${BASE[@]}" --out "$TMP/run" --steps 5 > /dev/null 2>&1 || { echo "FAIL base run"; fails=$((fails+1)); }
before=$(cd "$TMP/run" && ls && md5sum ckpt_*.h5)
expect "resume with another --dim" 2 "dim 8; cannot resume with --dim 12" "${BASE[@]}" --out "$TMP/run" --steps 10 --resume auto --dim 12
expect "resume from a missing checkpoint" 1 "nothere.h5" "${BASE[@]}" --out "$TMP/run" --steps 10 --resume "$TMP/nothere.h5"
after=$(cd "$TMP/run" && ls && md5sum ckpt_*.h5)
[ "$before" = "$after" ] && echo "ok   refused resumes leave the run directory untouched" ||
    { echo "FAIL run directory changed"; fails=$((fails+1)); }
# A checkpoint of another shape is refused, naming the tensor.
cp "$TMP/run/ckpt_00000005.h5" "$TMP/x.h5"
/usr/bin/python3 - "$TMP/x.h5" <<'EOF'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r+") as f:
    del f["params/output/bias"]
    f["params/output/bias"] = np.zeros(7, np.float32)
EOF
expect "checkpoint with a wrong shape" 2 "output/bias has shape (7)" "${BASE[@]}" --out "$TMP/run2" --steps 10 --resume "$TMP/x.h5"
head -c 3000 "$TMP/run/ckpt_00000005.h5" > "$TMP/trunc.h5"
expect "truncated checkpoint" 1 "trunc.h5" "${BASE[@]}" --out "$TMP/run3" --steps 10 --resume "$TMP/trunc.h5"
expect "info on a non-checkpoint" 1 "bad.tsv" info "$TMP/bad.tsv"
# NaN: a learning rate so large the loss overflows stops the run without a checkpoint.
expect "NaN loss stops the run" 2 "non-finite" "${BASE[@]}" --out "$TMP/nan" --steps 50 --lr 1e30 --optimizer sgd
ls "$TMP/nan"/ckpt_*.h5 > /dev/null 2>&1 && { echo "FAIL a checkpoint was written after NaN"; fails=$((fails+1)); } ||
    echo "ok   no checkpoint written after NaN"

if [ "$fails" -ne 0 ]; then echo "e2e_errors: $fails check(s) failed"; exit 1; fi
echo "e2e_errors: all checks passed"
