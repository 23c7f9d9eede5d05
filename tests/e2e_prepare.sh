#!/usr/bin/env bash
# e2e_prepare.sh LOCKSTEP BUILD_DIR - `lockstep prepare` builds exactly what `lockstep train`
# builds at start-up: for the three text kinds (classify, lm, parallel) the shards and the
# stamp it writes are byte-identical to those of a train-only run, and a following
# `lockstep train` with the same keys leaves them untouched (same inode and mtime: not
# re-encoded) and trains. A second prepare is a no-op. Bad arguments and bad data fail
# with a message and a non-zero status.
set -uo pipefail
LOCKSTEP=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
export OPENBLAS_NUM_THREADS=1 LOCKSTEP_PROGRESS=lines
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cd "$HERE" || exit 1    # relative data paths, as a user would give them
# train runs under mpirun -np 1: LeakSanitizer's tracer crashes at exit in an Open MPI
# singleton (it stops the world while the singleton's runtime threads are live)
fails=0
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
stamps() { (cd "$1/data" && stat -c '%n %i %y %s' ./*); }

# check NAME KIND MODEL-ARGS... -- DATA-ARGS...
check() {
    local name=$1 kind=$2
    shift 2
    local model=() data=()
    while [ "$1" != -- ]; do model+=("$1"); shift; done
    shift
    data=("$@")
    local P=$TMP/$name-prep R=$TMP/$name-train
    if ! "$LOCKSTEP" prepare --kind "$kind" "${data[@]}" --out "$P" > "$TMP/$name.prep.log" 2>&1; then
        fail "$name: prepare"; cat "$TMP/$name.prep.log"; return
    fi
    local before after
    before=$(stamps "$P")
    "$LOCKSTEP" prepare --kind "$kind" "${data[@]}" --out "$P" > "$TMP/$name.prep2.log" 2>&1
    if [ "$(stamps "$P")" = "$before" ] && grep -q "is current" "$TMP/$name.prep2.log"; then
        echo "ok   $name: a second prepare leaves the shards alone"
    else
        fail "$name: a second prepare rewrote something"; cat "$TMP/$name.prep2.log"
    fi
    sleep 1.1   # a rewrite would now show a different mtime, whatever the clock's resolution
    if ! mpirun -np 1 "$LOCKSTEP" train "${model[@]}" "${data[@]}" --out "$P" > "$TMP/$name.train.log" 2>&1; then
        fail "$name: train after prepare"; tail -3 "$TMP/$name.train.log"; return
    fi
    after=$(stamps "$P")
    if [ "$before" = "$after" ]; then
        echo "ok   $name: train used the prepared shards without rewriting them"
    else
        fail "$name: train rewrote the shards"; diff <(echo "$before") <(echo "$after")
    fi
    if ! mpirun -np 1 "$LOCKSTEP" train "${model[@]}" "${data[@]}" --out "$R" > "$TMP/$name.ref.log" 2>&1; then
        fail "$name: train-only run"; tail -3 "$TMP/$name.ref.log"; return
    fi
    local same=1 f
    for f in "$R"/data/*; do cmp -s "$f" "$P/data/$(basename "$f")" || { same=0; echo "  differs: $(basename "$f")"; }; done
    [ "$(ls "$R/data" | wc -l)" -eq "$(ls "$P/data" | wc -l)" ] || same=0
    if [ $same -eq 1 ]; then
        echo "ok   $name: shards and stamp byte-identical to train's own ($(ls "$P/data" | tr '\n' ' '))"
    else
        fail "$name: prepare and train produce different files"
    fi
}

check classify classify --model bow-classifier --dim 8 --steps 3 --batch-size 8 -- \
    --data data/desc_small/train.tsv --valid data/desc_small/valid.tsv \
    --test data/desc_small/test.tsv --min-count 1
check lm lm --model gpt --layers 1 --dim 16 --heads 2 --seq-len 16 --steps 2 --batch-size 4 -- \
    --data data/prose_small/train.txt --valid data/prose_small/valid.txt --vocab-size 500
check parallel parallel --model seq2seq --dim 8 --hidden 8 --steps 2 --batch-size 4 --bleu 0 -- \
    --data data/ende_small/train.tsv --valid data/ende_small/valid.tsv --max-len 20

# --model instead of --kind, and a config file, give the same result
printf 'data = data/desc_small/train.tsv\nmin-count = 1\nlr = 0.5\n' > "$TMP/c.conf"
"$LOCKSTEP" prepare --model bow-classifier --config "$TMP/c.conf" --out "$TMP/m" > "$TMP/m.log" 2>&1 &&
    cmp -s "$TMP/m/data/train.shard" "$TMP/classify-prep/data/train.shard" &&
    echo "ok   --model and --config (training keys ignored) give the same shard" ||
    { fail "--model/--config"; cat "$TMP/m.log"; }

# errors
expect_fail() { # want-status message-pattern args...
    local want=$1 pat=$2
    shift 2
    "$LOCKSTEP" prepare "$@" > "$TMP/e.log" 2>&1
    local st=$?
    if [ $st -eq "$want" ] && grep -q -- "$pat" "$TMP/e.log"; then
        echo "ok   error ($st): $(grep -o "lockstep: error: .*" "$TMP/e.log" | head -1)"
    else
        fail "prepare $*: status $st, wanted $want and '$pat'"; cat "$TMP/e.log"
    fi
}
expect_fail 2 "--data is required" --kind lm --out "$TMP/x"
expect_fail 2 "expected lm, classify or parallel" --kind dense --data data/plain.txt --out "$TMP/x"
expect_fail 2 "give --kind" --data data/plain.txt --out "$TMP/x"
expect_fail 2 "disagrees with --model gpt" --kind classify --model gpt --data data/plain.txt --out "$TMP/x"
expect_fail 2 "needs no preparation" --model vae --data data/digits_small.h5 --out "$TMP/x"
expect_fail 2 "unknown key" --kind lm --data data/plain.txt --out "$TMP/x" --no-such-key 3
expect_fail 1 "nonexistent" --kind lm --data "$TMP/nonexistent.txt" --out "$TMP/x"
printf 'good\tline one\nno tab here\n' > "$TMP/bad.tsv"
expect_fail 1 "bad.tsv:2" --kind classify --data "$TMP/bad.tsv" --out "$TMP/x"

if [ "$fails" -ne 0 ]; then echo "e2e_prepare: $fails check(s) failed"; exit 1; fi
echo "e2e_prepare: all checks passed"
