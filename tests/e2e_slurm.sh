#!/usr/bin/env bash
# e2e_slurm.sh LOCKSTEP BUILD_DIR - preemption and requeue under a real SLURM: starts a
# single-node cluster on this machine (scripts/slurm/cluster), submits
# scripts/slurm/lockstep-1node.sbatch training bow-classifier on tests/data/desc_small on
# 2 ranks, and preempts it three times:
#   A. mpirun launcher, `scancel --signal=USR1 --batch` (what --signal=B:USR1@N does):
#      the batch shell forwards USR1 to mpirun, the ranks stop after one agreed step with a
#      checkpoint, lockstep exits 99, the cluster requeues (RequeueExit=99);
#   B. srun --mpi=pmix launcher, external `scontrol requeue`: SIGTERM to every process of
#      the job, the ranks still stop with a checkpoint before KillWait ends.
# Each time: the job stopped with a checkpoint at the announced step, was requeued
# (Restarts=1), restarted with --resume auto from that checkpoint, completed, and its final
# parameters and optimizer state equal an uninterrupted run's bit for bit. The cluster is
# torn down (daemons stopped by recorded PID) whatever happens.
# Exit 77 (skip) only when the SLURM/munge packages are missing or we are not root.
set -uo pipefail
LOCKSTEP=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CLUSTER=$ROOT/scripts/slurm/cluster
SBATCH_FILE=$ROOT/scripts/slurm/lockstep-1node.sbatch
for c in munged munge slurmctld slurmd sbatch scontrol squeue scancel; do
    if ! command -v $c > /dev/null; then
        echo "SKIP e2e_slurm: $c not installed (apt-get install --no-install-recommends munge slurmctld slurmd slurm-client)"
        exit 77
    fi
done
if [ "$(id -u)" -ne 0 ]; then echo "SKIP e2e_slurm: needs root to run slurmd"; exit 77; fi

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
export LOCKSTEP_PROGRESS=lines
TMP=$(mktemp -d)
chmod 755 "$TMP"
T0=$SECONDS
cleanup() {
    "$CLUSTER" stop "$TMP/cluster" > /dev/null 2>&1
    rm -rf "$TMP"
}
trap cleanup EXIT
fails=0
fail() { echo "FAIL $*"; fails=$((fails + 1)); }

D=$HERE/data/desc_small
STEPS=1500
ARGS=(--model bow-classifier --data "$D/train.tsv" --dim 16 --min-count 1 --steps $STEPS
      --batch-size 16 --log-every 50 --threads 1 --seed 3 --ckpt-every 500 --keep 100)
FINAL=ckpt_$(printf %08d $STEPS).h5

# the uninterrupted reference, outside SLURM
mpirun -np 2 "$LOCKSTEP" train "${ARGS[@]}" --out "$TMP/full" > "$TMP/full.log" 2>&1 ||
    { echo "FAIL uninterrupted run"; tail -5 "$TMP/full.log"; exit 1; }
echo "ok   uninterrupted reference run: $((SECONDS - T0)) s"

if ! conf=$("$CLUSTER" start "$TMP/cluster" 2> "$TMP/cluster.log"); then
    echo "FAIL cannot start the single-node cluster:"; cat "$TMP/cluster.log"; exit 1
fi
eval "$conf"
echo "ok   cluster up ($SLURM_CONF) at $((SECONDS - T0)) s"
export LOCKSTEP

job_field() { scontrol show job "$1" 2> /dev/null | grep -o "$2=[^ ]*" | head -1 | cut -d= -f2; }
wait_state() { # job seconds state...: until the job is in one of the states
    local job=$1 secs=$2 st
    shift 2
    for _ in $(seq 1 $((secs * 5))); do
        st=$(job_field "$job" JobState)
        for want in "$@"; do [ "$st" = "$want" ] && return 0; done
        sleep 0.2
    done
    echo "job $job still $st after $secs s (wanted $*)"
    return 1
}

# preempt_case NAME LAUNCHER HOW
preempt_case() {
    local name=$1 launcher=$2 how=$3 out=$TMP/$1 log=$TMP/$1.out job
    job=$(LOCKSTEP_LAUNCH=$launcher sbatch --parsable --chdir="$TMP" --output="$log" --time=10 \
          "$SBATCH_FILE" train "${ARGS[@]}" --out "$out") || { fail "$name: sbatch"; return; }
    # preempt once the run is in its training loop (metrics.jsonl has a line)
    for _ in $(seq 1 600); do [ -s "$out/metrics.jsonl" ] && break; sleep 0.1; done
    if [ ! -s "$out/metrics.jsonl" ]; then fail "$name: job $job never started training"; cat "$log"; return; fi
    case $how in
    usr1) scancel --signal=USR1 --batch "$job" ;;
    requeue) scontrol requeue "$job" ;;
    esac
    # stopped with a checkpoint, requeued
    if ! wait_state "$job" 60 PENDING; then fail "$name: not requeued"; cat "$log"; return; fi
    local step restarts
    step=$(grep -o 'checkpointing step [0-9]*' "$log" | head -1 | awk '{print $3}')
    restarts=$(job_field "$job" Restarts)
    if [ -n "$step" ] && [ "$step" -lt $STEPS ] && [ -f "$out/ckpt_$(printf %08d "$step").h5" ] &&
       [ "${restarts:-0}" -ge 1 ]; then
        echo "ok   $name: job $job ($launcher, $how) stopped at step $step with a checkpoint and was requeued (Restarts=$restarts)"
    else
        fail "$name: step '$step', restarts '$restarts'"; cat "$log"; return
    fi
    # the restart resumes and completes
    if ! wait_state "$job" 240 COMPLETED FAILED CANCELLED TIMEOUT NODE_FAIL; then fail "$name: did not finish"; return; fi
    local st
    st=$(job_field "$job" JobState)
    restarts=$(job_field "$job" Restarts)
    if [ "$st" = COMPLETED ] && [ "$restarts" = 1 ] && grep -q "resumed from $out/ckpt_$(printf %08d "$step").h5 at step $step" "$log" &&
       grep -q "restart 1 on" "$log"; then
        echo "ok   $name: the restart resumed from step $step and completed (Restarts=1)"
    else
        fail "$name: final state $st, Restarts=$restarts"; grep -v '^step' "$log"; return
    fi
    if /usr/bin/python3 "$HERE/ckpt_compare.py" "$TMP/full/$FINAL" "$out/$FINAL" --exact --optim > "$TMP/$name.cmp" 2>&1; then
        echo "ok   $name: parameters and optimizer state = uninterrupted run, bit for bit"
    else
        fail "$name: final checkpoint differs from the uninterrupted run"; cat "$TMP/$name.cmp"
    fi
}

preempt_case A mpirun usr1
grep -q "requeues job .* (RequeueExit)" "$TMP/A.out" || fail "A: the script did not rely on RequeueExit=99"
echo "     ($((SECONDS - T0)) s)"
preempt_case B srun requeue
echo "     ($((SECONDS - T0)) s)"
# C. a cluster without RequeueExit (most are): the script calls `scontrol requeue` itself
sed -i '/^RequeueExit=/d' "$SLURM_CONF"
if scontrol reconfigure && sleep 1 && ! scontrol show config | grep -E '^RequeueExit ' | grep -qw 99; then
    preempt_case C mpirun usr1
    grep -q "requeueing job .* (scontrol requeue)" "$TMP/C.out" || fail "C: the script did not call scontrol requeue"
else
    fail "C: cannot drop RequeueExit from the cluster configuration"
fi
echo "     ($((SECONDS - T0)) s)"

if "$CLUSTER" stop "$TMP/cluster" > "$TMP/stop.log" 2>&1 &&
   ! "$CLUSTER" status "$TMP/cluster" | grep -q '^[a-z]* running'; then
    echo "ok   cluster stopped"
else
    fail "cluster stop"; cat "$TMP/stop.log"
fi
if [ "$fails" -ne 0 ]; then echo "e2e_slurm: $fails check(s) failed ($((SECONDS - T0)) s)"; exit 1; fi
echo "e2e_slurm: all checks passed in $((SECONDS - T0)) s"
