#!/usr/bin/env bash
# e2e_train.sh LOCKSTEP BUILD_DIR - data parallelism and resume, end to end.
#
# On the small real corpus tests/data/desc_small (Debian package descriptions):
#  1. the same global batch on 1, 2 and 4 ranks gives the same parameters after 50 steps
#     (within 1e-5 relative);
#  2. 40 steps in one go equal 20 steps + --resume auto + 20 steps, bit for bit;
#  3. resuming on a different rank count stays within 1e-5;
#  4. --deterministic gives bit-identical parameters on 1, 2, 3 and 4 ranks, also resumed
#     on another rank count;
#  5. the checkpoint is readable by h5py with every parameter at the right shape;
#  6. the model learns: validation accuracy beats the majority class.
set -euo pipefail
LOCKSTEP=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OPENBLAS_NUM_THREADS=1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
D=$HERE/data/desc_small
COMMON=(--model bow-classifier --data "$D/train.tsv" --valid "$D/valid.tsv" --dim 16
        --batch-size 24 --optimizer adamw --lr 0.01 --schedule cosine --warmup 5
        --min-count 1 --seed 7 --threads 1 --log-every 1000 --dropout 0.1)
CMP=(/usr/bin/python3 "$HERE/ckpt_compare.py")
fails=0
check() { # name, command...
    local name=$1; shift
    if out=$("$@" 2>&1); then echo "ok   $name: ${out##*$'\n'}"; else
        echo "FAIL $name"; echo "$out" | tail -5; fails=$((fails + 1)); fi
}
train() { # ranks, out, extra args...
    local np=$1 out=$2; shift 2
    mpirun -np "$np" "$LOCKSTEP" train "${COMMON[@]}" --out "$out" "$@" > "$out.log" 2>&1 ||
        { echo "training failed ($np ranks, $out):"; tail -5 "$out.log"; exit 1; }
}

# 1. rank-count invariance
for np in 1 2 4; do train $np "$TMP/p$np" --steps 50; done
check "2 ranks = 1 rank after 50 steps" "${CMP[@]}" "$TMP/p1/ckpt_00000050.h5" "$TMP/p2/ckpt_00000050.h5" --rtol 1e-5
check "4 ranks = 1 rank after 50 steps" "${CMP[@]}" "$TMP/p1/ckpt_00000050.h5" "$TMP/p4/ckpt_00000050.h5" --rtol 1e-5

# 1b. the same for a transformer whose backward starts reducing gradient buckets early
#     (nn_grad_ready per block), with buckets small enough to be cut inside the model
P=$HERE/data/prose_small
GPT=(--model gpt --data "$P/train.txt" --batch-size 8 --seq-len 32 --layers 2 --dim 32 --heads 4
     --ff 64 --context 32 --optimizer adamw --lr 0.003 --seed 5 --threads 1 --log-every 1000)
for np in 1 2; do
    mpirun -np $np "$LOCKSTEP" train "${GPT[@]}" --steps 20 --bucket-mb 0.01 --out "$TMP/g$np" > "$TMP/g$np.log" 2>&1 ||
        { echo "gpt training failed"; tail -3 "$TMP/g$np.log"; exit 1; }
done
mpirun -np 2 "$LOCKSTEP" train "${GPT[@]}" --steps 20 --bucket-mb 0 --out "$TMP/g2plain" > "$TMP/g2plain.log" 2>&1
# (attention key biases have a zero gradient up to rounding: Adam makes that noise a step)
check "gpt, 2 ranks with overlapped buckets = 1 rank" "${CMP[@]}" "$TMP/g1/ckpt_00000020.h5" "$TMP/g2/ckpt_00000020.h5" --rtol 1e-5 --skip attn/b_k
check "gpt, overlapped buckets = one allreduce after backward, bit for bit" "${CMP[@]}" "$TMP/g2plain/ckpt_00000020.h5" "$TMP/g2/ckpt_00000020.h5" --exact --optim
# the other models that announce finished gradients (transformer: encoder and decoder
# blocks; rnn-lm and seq2seq: the output layer before the recurrent backward) reduce them
# early as well, to the same bits
E=$HERE/data/ende_small
overlap() { # name, model args...
    local name=$1; shift
    for mb in 0 0.002; do
        mpirun -np 2 "$LOCKSTEP" train "$@" --steps 8 --seed 3 --threads 1 --log-every 1000 \
            --bucket-mb $mb --out "$TMP/$name$mb" > "$TMP/$name$mb.log" 2>&1 ||
            { echo "$name training failed"; tail -3 "$TMP/$name$mb.log"; exit 1; }
    done
    check "$name, overlapped buckets = one allreduce after backward, bit for bit" "${CMP[@]}" \
        "$TMP/${name}0/ckpt_00000008.h5" "$TMP/${name}0.002/ckpt_00000008.h5" --exact --optim
    early=$(grep -o "[0-9]* of [0-9]* gradient buckets reduced during backward" "$TMP/${name}0.002.log" || true)
    check "$name: buckets start during backward ($early)" test "${early%% *}" -gt 0
}
overlap transformer --model transformer --data "$E/train.tsv" --batch-size 16 --layers 2 \
    --dim 32 --heads 4 --ff 64 --min-count 1 --optimizer adamw --lr 0.003
overlap rnn-lm --model rnn-lm --cell lstm --data "$P/train.txt" --batch-size 8 --seq-len 16 \
    --hidden 24 --dim 24 --lr 0.005
overlap seq2seq --model seq2seq --data "$E/train.tsv" --batch-size 16 --hidden 24 --dim 24 \
    --min-count 1 --attention bahdanau

# 2. exact resume on the same rank count
train 2 "$TMP/full" --steps 40
train 2 "$TMP/half" --steps 40 --stop-after 20
test -f "$TMP/half/ckpt_00000020.h5" && ! test -f "$TMP/half/ckpt_00000040.h5"
train 2 "$TMP/half" --steps 40 --resume auto
grep -q "resumed from .*ckpt_00000020.h5 at step 20" "$TMP/half.log"
check "20 + resume + 20 = 40 steps, bit for bit" "${CMP[@]}" "$TMP/full/ckpt_00000040.h5" "$TMP/half/ckpt_00000040.h5" --exact --optim

# 3. resume on another rank count
train 2 "$TMP/other" --steps 40 --stop-after 20
train 1 "$TMP/other" --steps 40 --resume auto
check "resume 2 ranks -> 1 rank within 1e-5" "${CMP[@]}" "$TMP/full/ckpt_00000040.h5" "$TMP/other/ckpt_00000040.h5" --rtol 1e-5 --optim

# 3b. sharded optimizer state (ZeRO-1): same result, and checkpoints move between modes
train 2 "$TMP/z2" --steps 40 --zero 1
check "zero-1 on 2 ranks = plain 2 ranks" "${CMP[@]}" "$TMP/full/ckpt_00000040.h5" "$TMP/z2/ckpt_00000040.h5" --rtol 1e-5 --optim
train 4 "$TMP/zr" --steps 40 --zero 1 --stop-after 20
train 1 "$TMP/zr" --steps 40 --resume auto --zero 0
check "zero-1 on 4 ranks, resumed plain on 1 rank" "${CMP[@]}" "$TMP/full/ckpt_00000040.h5" "$TMP/zr/ckpt_00000040.h5" --rtol 1e-5 --optim
train 2 "$TMP/pz" --steps 40 --stop-after 20
train 3 "$TMP/pz" --steps 40 --resume auto --zero 1
check "plain on 2 ranks, resumed zero-1 on 3 ranks" "${CMP[@]}" "$TMP/full/ckpt_00000040.h5" "$TMP/pz/ckpt_00000040.h5" --rtol 1e-5 --optim

# 4. deterministic mode: the same bits on any rank count
for np in 1 2 3 4; do train $np "$TMP/d$np" --steps 30 --deterministic --micro-batch 6; done
for np in 2 3 4; do
    check "deterministic: $np ranks = 1 rank, bit for bit" "${CMP[@]}" "$TMP/d1/ckpt_00000030.h5" "$TMP/d$np/ckpt_00000030.h5" --exact --optim
done
train 3 "$TMP/dr" --steps 30 --deterministic --micro-batch 6 --stop-after 13
train 2 "$TMP/dr" --steps 30 --deterministic --micro-batch 6 --resume auto
check "deterministic: 3 ranks + resume on 2 = 1 rank, bit for bit" "${CMP[@]}" "$TMP/d1/ckpt_00000030.h5" "$TMP/dr/ckpt_00000030.h5" --exact --optim

# 5. h5py reads every parameter with the right shape
V=$(grep -o 'vocab [0-9]*' "$TMP/p1.log" | head -1 | cut -d' ' -f2)
check "h5py reads the checkpoint layout" /usr/bin/python3 "$HERE/check_ckpt_h5py.py" "$TMP/p1/ckpt_00000050.h5" \
    "params/embedding/weight:$V,16" "params/output/weight:4,16" "params/output/bias:4"

# 5b. pretrained embeddings, frozen: copied by word, and untouched by training
train 1 "$TMP/init" --steps 10 --init-embeddings "$TMP/p1/ckpt_00000050.h5:embedding/weight" --freeze embedding
grep -q "initialised [0-9]* of [0-9]* embedding rows" "$TMP/init.log" &&
/usr/bin/python3 - "$TMP/p1/ckpt_00000050.h5" "$TMP/init/ckpt_00000010.h5" <<'PY' && echo "ok   --init-embeddings + --freeze keep the pretrained rows" || { echo "FAIL init-embeddings"; fails=$((fails+1)); }
import sys, h5py, numpy as np
a, b = (h5py.File(p, "r") for p in sys.argv[1:3])
va = [w for w in a["vocab/src"].asstr()[()]]; vb = [w for w in b["vocab/src"].asstr()[()]]
ea, eb = a["params/embedding/weight"][()], b["params/embedding/weight"][()]
ia = {w: i for i, w in enumerate(va)}
rows = [(ia[w], j) for j, w in enumerate(vb) if j >= 4 and w in ia]
assert len(rows) > 100, len(rows)
assert all(np.array_equal(ea[i], eb[j]) for i, j in rows), "rows differ"
assert not np.array_equal(a["params/output/weight"][()], b["params/output/weight"][()])
PY

# 6. it learns: a longer run beats the majority class (0.25 on 4 balanced labels) by far
train 2 "$TMP/learn" --steps 150 --lr 0.03 --test "$D/test.tsv"
acc=$(grep -o 'test step [0-9]*: loss [0-9.]*  acc [0-9.]*' "$TMP/learn.log" | awk '{print $NF}')
check "test accuracy $acc > 0.6" awk -v a="$acc" 'BEGIN{exit !(a > 0.6)}'

echo "$(( fails == 0 ? 1 : 0 )) passed, $fails failed" >/dev/null
if [ "$fails" -ne 0 ]; then echo "e2e_train: $fails check(s) failed"; exit 1; fi
echo "e2e_train: all checks passed"
