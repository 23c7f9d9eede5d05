#!/usr/bin/env bash
# e2e_sparse.sh LOCKSTEP BUILD_DIR - the row-sparse training path (trainer/sparse.c) and
# local SGD (--sync-every), end to end, with skip-gram on tests/data/prose_small.
#  1. 1 rank, plain SGD: the sparse path (touched rows only) gives the parameters of the
#     dense path (--sparse-updates 0) after 60 steps (within 1e-6 relative);
#  2. 2 ranks, --sync-every 1 (touched rows' gradients summed every step) = 1 rank within
#     1e-4 relative (float sums in another order);
#  3. 2 ranks, --sync-every 10 (each rank applies its own share, changes summed every 10
#     steps): the loss falls, ends within 10 % of the 1-rank loss, and at every checkpoint
#     both ranks hold the same parameters (the trainer compares checksums across ranks and
#     prints them; the checksum recomputed here from the checkpoint matches);
#  4. resume: stopped with --stop-after and resumed with --resume auto equals the
#     uninterrupted run bit for bit, on 1 rank and on 2 ranks with --sync-every 10 (the
#     stop waits for the next sync point);
#  5. lazy Adam (--sparse-updates 1 --optimizer adam) trains;
#  6. conflicts are one-line errors: --sync-every 10 with --deterministic, --zero 1 or
#     adam; --sparse-updates 1 with --deterministic; --sync-every 0.
set -uo pipefail
LOCKSTEP=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OPENBLAS_NUM_THREADS=1 LOCKSTEP_PROGRESS=lines
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
P=$HERE/data/prose_small
SG=(--model skipgram --data "$P/train.txt" --batch-size 16 --seq-len 64 --log-every 10
    --optimizer sgd --schedule linear --lr 20 --dim 32 --window 3 --min-count 2 --threads 1)
CMP=(/usr/bin/python3 "$HERE/ckpt_compare.py")
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { # name, command...
    local name=$1; shift
    if out=$("$@" 2>&1); then ok "$name: ${out##*$'\n'}"; else bad "$name: $(echo "$out" | tail -3)"; fi
}
train() { # ranks, out, args...
    local np=$1 out=$2; shift 2
    mpirun -np "$np" "$LOCKSTEP" train "${SG[@]}" --out "$out" "$@" > "$out.log" 2>&1 ||
        { bad "training failed ($np ranks, $out): $(tail -3 "$out.log")"; return 1; }
}
losses() { grep -o '^step [0-9]*/[0-9]*  loss [0-9.]*' "$1" | awk '{print $NF}'; }

# 1. sparse = dense on 1 rank
train 1 "$TMP/dense" --steps 60 --sparse-updates 0
train 1 "$TMP/sparse" --steps 60
grep -q "sparse updates (touched rows only) of input/weight output/weight" "$TMP/sparse.log" &&
    ! grep -q "sparse updates" "$TMP/dense.log" && ok "banner names the sparse path (and only there)" ||
    bad "banner: $(grep sparse "$TMP/sparse.log" "$TMP/dense.log")"
check "1 rank: sparse path = dense path after 60 steps" "${CMP[@]}" "$TMP/dense/ckpt_00000060.h5" \
    "$TMP/sparse/ckpt_00000060.h5" --rtol 1e-6

# 2. K = 1 on 2 ranks = 1 rank
train 2 "$TMP/k1" --steps 60 --sync-every 1
check "2 ranks --sync-every 1 = 1 rank after 60 steps" "${CMP[@]}" "$TMP/sparse/ckpt_00000060.h5" \
    "$TMP/k1/ckpt_00000060.h5" --rtol 1e-4

# 3. local SGD on 2 ranks against 1 rank, 4 epochs (240 steps)
train 1 "$TMP/one" --epochs 4
train 2 "$TMP/k10" --epochs 4 --sync-every 10 --ckpt-every 60
first=$(losses "$TMP/k10.log" | head -1) last=$(losses "$TMP/k10.log" | tail -1)
ref=$(losses "$TMP/one.log" | tail -1)
awk -v a="$first" -v b="$last" -v r="$ref" 'BEGIN{exit !(b < 0.9 * a && b < 1.1 * r)}' &&
    ok "2 ranks --sync-every 10: loss $first -> $last (1 rank: $ref)" ||
    bad "2 ranks --sync-every 10: loss $first -> $last (1 rank: $ref)"
n=$(grep -c "parameters identical on 2 ranks" "$TMP/k10.log")
[ "$n" -ge 4 ] && ok "2 ranks --sync-every 10: $n checkpoints with identical parameters on both ranks" ||
    bad "replica checks: $n lines"
for step in 180 240; do
    want=$(grep -o "step $step: parameters identical on 2 ranks (checksum [0-9a-f]*)" "$TMP/k10.log" |
           grep -o '[0-9a-f]*)$' | tr -d ')')
    got=$(/usr/bin/python3 - "$TMP/k10/ckpt_$(printf %08d $step).h5" <<'EOF'
import sys
import h5py
import numpy as np
with h5py.File(sys.argv[1], "r") as f:  # registry order of skipgram's parameters
    w = np.concatenate([f["params/input/weight"][()].ravel(), f["params/output/weight"][()].ravel()])
bits = w.astype(np.float32).view(np.uint32).astype(np.uint64)
odd = 2 * np.arange(bits.size, dtype=np.uint64) + 1
print("%016x" % (int(np.sum(bits * odd, dtype=np.uint64)) & (2**64 - 1)))
EOF
)
    [ -n "$want" ] && [ "$want" = "$got" ] && ok "step $step: checkpoint checksum $got = the ranks' checksum" ||
        bad "step $step: checkpoint checksum '$got' vs ranks' '$want'"
done

# 4. resume, bit for bit
train 1 "$TMP/r1" --epochs 4 --stop-after 95
train 1 "$TMP/r1" --epochs 4 --resume auto
check "1 rank: 95 steps + resume = 240 steps" "${CMP[@]}" "$TMP/one/ckpt_00000240.h5" \
    "$TMP/r1/ckpt_00000240.h5" --exact
train 2 "$TMP/r2" --epochs 4 --sync-every 10 --ckpt-every 60 --stop-after 95
[ -f "$TMP/r2/ckpt_00000100.h5" ] && ok "2 ranks --sync-every 10: --stop-after 95 stopped at the sync of step 100" ||
    bad "2 ranks: no checkpoint at step 100: $(ls "$TMP/r2")"
train 2 "$TMP/r2" --epochs 4 --sync-every 10 --ckpt-every 60 --resume auto
check "2 ranks --sync-every 10: 100 steps + resume = 240 steps" "${CMP[@]}" \
    "$TMP/k10/ckpt_00000240.h5" "$TMP/r2/ckpt_00000240.h5" --exact

# 5. lazy Adam
train 2 "$TMP/adam" --steps 120 --sparse-updates 1 --optimizer adam --lr 0.01 &&
    first=$(losses "$TMP/adam.log" | head -1) last=$(losses "$TMP/adam.log" | tail -1) &&
    awk -v a="$first" -v b="$last" 'BEGIN{exit !(b < 0.9 * a)}' &&
    ok "lazy adam on 2 ranks: loss $first -> $last" || bad "lazy adam: loss ${first:-?} -> ${last:-?}"

# 6. conflicts
refuse() { # expected message part, args...: exit non-zero with ONE line from lockstep
    local want=$1; shift
    if mpirun -np 1 "$LOCKSTEP" train "${SG[@]}" --steps 5 --out "$TMP/err" "$@" > "$TMP/err.log" 2>&1; then
        bad "accepted: $*"
    elif grep -q -- "^lockstep: error: .*$want" "$TMP/err.log" &&
        [ "$(grep -c '^lockstep' "$TMP/err.log")" = 1 ]; then
        ok "refused $*: $(grep '^lockstep' "$TMP/err.log")"
    else
        bad "refused $* with: $(cat "$TMP/err.log")"
    fi
}
refuse "cannot be combined with --deterministic" --sync-every 10 --deterministic
refuse "cannot be combined with --zero 1" --sync-every 10 --zero 1
refuse "cannot be combined with --optimizer other than sgd" --sync-every 10 --optimizer adam
refuse "--sparse-updates 1 cannot be combined with --deterministic" --sparse-updates 1 --deterministic
refuse "--sync-every must be auto or a step count >= 1" --sync-every 0

[ "$fails" = 0 ] && echo "e2e_sparse: all passed" || echo "e2e_sparse: $fails failed"
exit $((fails > 0))
