#!/usr/bin/env bash
# e2e_plot.sh LOCKSTEP BUILD_DIR - scripts/plot-metrics turns a real run's metrics.jsonl
# into a PNG with one panel per metric present: a classifier with a validation set gets
# loss, lr, throughput and accuracy (2x2), a language model also perplexity (3 rows), a run
# without validation three panels; a log with a step written twice (restart) and a
# constant learning rate still plot; a missing log fails. Skips (77) without gnuplot.
set -uo pipefail
LOCKSTEP=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
PLOT=$HERE/../scripts/plot-metrics
command -v gnuplot > /dev/null || { echo "SKIP e2e_plot: gnuplot not installed (gnuplot-nox)"; exit 77; }
export OPENBLAS_NUM_THREADS=1 LOCKSTEP_PROGRESS=lines
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fails=0
D=$HERE/data
png_size() { # width x height from the IHDR chunk
    od -An -tu1 -j16 -N8 "$1" | awk '{printf "%dx%d", $1*16777216+$2*65536+$3*256+$4, $5*16777216+$6*65536+$7*256+$8}'
}
check() { # name run-dir expected-size
    local out
    if ! out=$("$PLOT" "$2" "$TMP/$1.png" 2> "$TMP/$1.err"); then
        echo "FAIL $1: plot-metrics failed"; cat "$TMP/$1.err"; fails=$((fails + 1)); return
    fi
    local magic size
    magic=$(head -c 8 "$TMP/$1.png" | od -An -tx1 | tr -d ' \n')
    size=$(png_size "$TMP/$1.png")
    if [ "$out" = "$TMP/$1.png" ] && [ "$magic" = 89504e470d0a1a0a ] && [ "$size" = "$3" ] && [ ! -s "$TMP/$1.err" ]; then
        echo "ok   $1: $size PNG"
    else
        echo "FAIL $1: printed '$out', magic $magic, size $size (wanted $3)"; cat "$TMP/$1.err"
        fails=$((fails + 1))
    fi
}
"$LOCKSTEP" train --model bow-classifier --data "$D/desc_small/train.tsv" --valid "$D/desc_small/valid.tsv" \
    --min-count 1 --dim 8 --steps 60 --batch-size 16 --log-every 10 --eval-every 20 --schedule cosine \
    --warmup 10 --out "$TMP/bow" > /dev/null || { echo "FAIL bow run"; exit 1; }
check classifier "$TMP/bow" 1280x720
"$LOCKSTEP" train --model gpt --layers 1 --dim 16 --heads 2 --seq-len 16 --data "$D/prose_small/train.txt" \
    --valid "$D/prose_small/valid.txt" --vocab-size 500 --steps 20 --batch-size 4 --log-every 5 \
    --eval-every 10 --eval-batches 2 --out "$TMP/gpt" > /dev/null || { echo "FAIL gpt run"; exit 1; }
# a restart that re-logs step 20 with another value
echo '{"step":20,"split":"train","loss":4.5,"lr":0.001,"ex_per_s":100.0,"elapsed":1.0}' >> "$TMP/gpt/metrics.jsonl"
check lm-with-restart "$TMP/gpt" 1280x1080
"$LOCKSTEP" train --model bow-classifier --data "$D/desc_small/train.tsv" --min-count 1 --dim 8 --steps 30 \
    --batch-size 16 --log-every 10 --out "$TMP/novalid" > /dev/null || { echo "FAIL novalid run"; exit 1; }
check no-validation "$TMP/novalid" 1280x720
if "$PLOT" "$TMP/nothing" > /dev/null 2> "$TMP/e.err" || ! grep -q "metrics.jsonl missing" "$TMP/e.err"; then
    echo "FAIL missing log not reported"; fails=$((fails + 1))
else
    echo "ok   missing log: $(cat "$TMP/e.err")"
fi
if [ "$fails" -ne 0 ]; then echo "e2e_plot: $fails check(s) failed"; exit 1; fi
echo "e2e_plot: all checks passed"
