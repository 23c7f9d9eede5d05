#!/usr/bin/env bash
# e2e_preempt.sh LOCKSTEP BUILD_DIR - preemption as SLURM does it: SIGUSR1 to mpirun (which
# forwards it to the ranks) mid-run makes every rank stop after the same step, the
# coordinator checkpoint it, and the job exit with status 99; `--resume auto` then finishes
# the run with the same bits as an uninterrupted one. SIGKILL of one rank ends the job
# promptly with a non-zero status, and a restart resumes from the last complete checkpoint
# to the same final parameters.
set -uo pipefail
LOCKSTEP=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OPENBLAS_NUM_THREADS=1 LOCKSTEP_PROGRESS=lines
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
D=$HERE/data/desc_small
# 8000 steps of ~0.15 ms: long enough (about a second) that the signals below land mid-run
ARGS=(train --model bow-classifier --data "$D/train.tsv" --dim 16 --min-count 1 --steps 8000
      --batch-size 16 --log-every 20 --threads 1 --seed 3 --ckpt-every 1000)
FINAL=ckpt_00008000.h5
fails=0
wait_for_log() { # file: until metrics.jsonl has a line (the run is in its loop)
    for _ in $(seq 1 600); do [ -s "$1" ] && return 0; sleep 0.05; done; return 1
}

mpirun -np 2 "$LOCKSTEP" "${ARGS[@]}" --out "$TMP/full" > "$TMP/full.log" 2>&1 ||
    { echo "FAIL uninterrupted run"; exit 1; }

# 1. SIGUSR1
mpirun -np 2 "$LOCKSTEP" "${ARGS[@]}" --out "$TMP/sig" > "$TMP/sig.log" 2>&1 &
pid=$!
wait_for_log "$TMP/sig/metrics.jsonl"
kill -USR1 $pid
wait $pid
status=$?
step=$(grep -o 'checkpointing step [0-9]*' "$TMP/sig.log" | awk '{print $3}')
if [ $status -eq 99 ] && [ -n "$step" ] && [ -f "$TMP/sig/ckpt_$(printf %08d "$step").h5" ]; then
    echo "ok   SIGUSR1: stopped at step $step with a checkpoint, exit 99"
else
    echo "FAIL SIGUSR1: exit $status, step '$step'"; tail -5 "$TMP/sig.log"; fails=$((fails+1))
fi
mpirun -np 2 "$LOCKSTEP" "${ARGS[@]}" --out "$TMP/sig" --resume auto > "$TMP/sig2.log" 2>&1
if /usr/bin/python3 "$HERE/ckpt_compare.py" "$TMP/full/$FINAL" "$TMP/sig/$FINAL" --exact --optim > /dev/null; then
    echo "ok   resumed after SIGUSR1 = uninterrupted, bit for bit"
else
    echo "FAIL resumed run differs"; fails=$((fails+1))
fi

# 2. SIGKILL one rank mid-run
mpirun -np 2 "$LOCKSTEP" "${ARGS[@]}" --out "$TMP/kill" > "$TMP/kill.log" 2>&1 &
pid=$!
# after the first checkpoint (polled every 10 ms: checkpoints are ~0.15 s apart)
for _ in $(seq 1 3000); do compgen -G "$TMP/kill/ckpt_*.h5" > /dev/null && break; sleep 0.01; done
victim=$(pgrep -f "lockstep train.*$TMP/kill" | tail -1)
t0=$(date +%s%N)
kill -KILL "$victim"
wait $pid
status=$?
dt_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
if [ $status -ne 0 ] && [ $dt_ms -lt 10000 ]; then
    echo "ok   SIGKILL of rank pid $victim: job ended in ${dt_ms} ms with status $status"
else
    echo "FAIL SIGKILL: status $status after ${dt_ms} ms"; fails=$((fails+1))
fi
mpirun -np 2 "$LOCKSTEP" "${ARGS[@]}" --out "$TMP/kill" --resume auto > "$TMP/kill2.log" 2>&1
grep -o "resumed from .*" "$TMP/kill2.log" | head -1
if /usr/bin/python3 "$HERE/ckpt_compare.py" "$TMP/full/$FINAL" "$TMP/kill/$FINAL" --exact --optim > /dev/null; then
    echo "ok   restart after SIGKILL reaches the uninterrupted parameters, bit for bit"
else
    echo "FAIL restart after SIGKILL differs"; fails=$((fails+1))
fi
if [ "$fails" -ne 0 ]; then echo "e2e_preempt: $fails check(s) failed"; exit 1; fi
echo "e2e_preempt: all checks passed"
