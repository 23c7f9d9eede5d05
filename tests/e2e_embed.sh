#!/usr/bin/env bash
# e2e_embed.sh LOCKSTEP BUILD_DIR - word embeddings through the real program on 2 ranks,
# on tests/data/prose_small: skip-gram (negative sampling), CBOW and full-softmax training
# lowers the loss; `embed neighbors` and `embed analogy` answer with vocabulary words
# (never the query words), ranked by decreasing cosine; `embed export` writes word2vec
# text whose header matches its line count and width; `embed eval --vec` on the export
# gives the same numbers as on the checkpoint; errors (unknown word, bad subcommand,
# missing --ckpt) exit non-zero with a message; the sparse baselines (onehot-logreg,
# bow-logreg) train on desc_small and report test accuracy; `embed eval` and `embed analogy`
# on hand-made vectors give the answers worked out by hand (accuracy, Spearman with ties).
set -uo pipefail
LOCKSTEP=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib_e2e.sh" # env, $TMP, ok/bad, train NAME ARGS...

P=$HERE/data/prose_small
SG=(--data "$P/train.txt" --valid "$P/valid.txt" --batch-size 16 --seq-len 64 --epochs 4
    --log-every 10 --optimizer sgd --schedule linear --lr 20 --dim 32 --window 3 --min-count 2)
train sg --model skipgram "${SG[@]}"
train cbow --model skipgram "${SG[@]}" --cbow 1 --lr 60
# full softmax: the loss starts at log V (uniform) and must end clearly below it
if mpirun -np 2 "$LOCKSTEP" train --out "$TMP/softmax" --threads 1 --model skipgram --loss softmax \
    --data "$P/train.txt" --batch-size 16 --seq-len 64 --steps 150 --log-every 30 --dim 32 \
    --window 3 --vocab-size 300 --optimizer adam --lr 0.02 > "$TMP/softmax.log" 2>&1; then
    V=$(grep -o 'vocab [0-9]*' "$TMP/softmax.log" | head -1 | awk '{print $2}')
    last=$(grep -o '^step [0-9]*/[0-9]*  loss [0-9.]*' "$TMP/softmax.log" | tail -1 | awk '{print $NF}')
    awk -v v="$V" -v l="$last" 'BEGIN{exit !(l < log(v) - 0.25)}' &&
        ok "softmax: loss $last < log V - 0.25 = $(awk -v v="$V" 'BEGIN{print log(v) - 0.25}')" ||
        bad "softmax: loss $last not below log V - 0.25 (V $V)"
else
    bad "softmax: training failed"; tail -5 "$TMP/softmax.log"
fi
grep -q "valid step [0-9]*: loss [0-9.]*" "$TMP/sg.log" && ok "skipgram: validation loss reported" ||
    bad "skipgram: no validation loss"

C=$(ls "$TMP"/sg/ckpt_*.h5 2>/dev/null | tail -1)
if [ -z "$C" ]; then
    bad "no skipgram checkpoint"
else
    # neighbors: k lines "word<TAB>cos", cosines non-increasing, the query not among them
    out=$("$LOCKSTEP" embed neighbors --ckpt "$C" package --k 5 2>&1)
    n=$(echo "$out" | awk -F'\t' 'NF == 2 && $2 ~ /^-?[0-9.]+$/' | wc -l)
    sorted=$(echo "$out" | awk -F'\t' 'NR > 1 && $2 > prev + 1e-6 {bad = 1} {prev = $2} END {print bad ? "no" : "yes"}')
    if [ "$n" = 5 ] && [ "$sorted" = yes ] && ! echo "$out" | grep -q $'^package\t'; then
        ok "neighbors of 'package': $(echo "$out" | cut -f1 | tr '\n' ' ')"
    else
        bad "neighbors: '$out'"
    fi
    out=$("$LOCKSTEP" embed analogy --ckpt "$C" file files package --k 3 2>&1)
    if [ "$(echo "$out" | grep -c $'\t')" = 3 ] && ! echo "$out" | grep -qE $'^(file|files|package)\t'; then
        ok "analogy file:files::package:? -> $(echo "$out" | cut -f1 | tr '\n' ' ')"
    else
        bad "analogy: '$out'"
    fi
    # export: header "V dim", V lines after it, dim + 1 fields each
    if "$LOCKSTEP" embed export --ckpt "$C" --out "$TMP/sg.vec" 2> "$TMP/export.log"; then
        read -r V D < <(head -1 "$TMP/sg.vec")
        lines=$(($(wc -l < "$TMP/sg.vec") - 1))
        widths=$(tail -n +2 "$TMP/sg.vec" | awk '{print NF}' | sort -u | tr '\n' ' ')
        vocab=$(grep -o 'vocab [0-9]*' "$TMP/sg.log" | head -1 | awk '{print $2}')
        if [ "$D" = 32 ] && [ "$lines" = "$V" ] && [ "$widths" = "33 " ] && [ "$V" = $((vocab - 4)) ]; then
            ok "export: header '$V $D', $lines vectors of $D (vocabulary $vocab minus 4 specials)"
        else
            bad "export: header '$V $D', $lines lines, widths '$widths', vocab $vocab"
        fi
        # the same embeddings read back from text give the same evaluation
        printf ': test\nfile files package packages\nfile files option options\n' > "$TMP/ana.txt"
        printf 'file files 0.9\npackage option 0.2\nfile package 0.3\nsystem user 0.1\n' > "$TMP/sim.txt"
        a=$("$LOCKSTEP" embed eval --ckpt "$C" --analogies "$TMP/ana.txt" --similarity "$TMP/sim.txt" 2>&1)
        b=$("$LOCKSTEP" embed eval --vec "$TMP/sg.vec" --analogies "$TMP/ana.txt" --similarity "$TMP/sim.txt" 2>&1)
        if [ -n "$a" ] && [ "$a" = "$b" ] && echo "$a" | grep -q "similarity spearman [-0-9.]* over 4 of 4 pairs" &&
            echo "$a" | grep -q "coverage 2 of 2 questions"; then
            ok "eval: checkpoint and exported text agree: $(echo "$a" | tail -2 | tr '\n' ' ')"
        else
            bad "eval: ckpt '$a' vs vec '$b'"
        fi
        b=$("$LOCKSTEP" embed neighbors --vec "$TMP/sg.vec" package --k 5 2>&1)
        [ "$(echo "$b" | cut -f1)" = "$(echo "$out" | cut -f1)" ] || true
    else
        bad "export failed: $(cat "$TMP/export.log")"
    fi
    # errors
    if "$LOCKSTEP" embed neighbors --ckpt "$C" zzzunknownzzz > "$TMP/e1" 2>&1; then
        bad "unknown word accepted"
    else
        grep -q "not in the vocabulary" "$TMP/e1" && ok "unknown word: $(head -1 "$TMP/e1")" ||
            bad "unknown word message: $(cat "$TMP/e1")"
    fi
    "$LOCKSTEP" embed frobnicate --ckpt "$C" > "$TMP/e2" 2>&1 && bad "unknown subcommand accepted" ||
        ok "unknown subcommand rejected"
    "$LOCKSTEP" embed neighbors package > "$TMP/e3" 2>&1 && bad "missing --ckpt accepted" ||
        ok "missing --ckpt rejected: $(head -1 "$TMP/e3")"
fi

# eval on hand-made vectors with answers worked out by hand: unit vectors a (1,0),
# b (0,1), c (1,1)/sqrt2, d (-1,1)/sqrt2, e (1,-1)/sqrt2. b - a + e points along d, so
# "a b e d" is right and "a b e c" wrong; the third question has an unknown word.
# Similarity: model cosines (a,c) .707 (b,d) .707 (a,b) 0 (a,d) -.707 have ranks
# 3.5 3.5 2 1; gold 4 1 2 3 -> Spearman -0.5 / sqrt(4.5 * 5) = -0.1054.
printf '5 2\na 1 0\nb 0 1\nc 1 1\nd -1 1\ne 1 -1\n' > "$TMP/hand.vec"
printf ': t\na b e d\na b e c\na b zz d\n' > "$TMP/hand_ana.txt"
printf 'a c 4\nb d 1\na b 2\na d 3\na zz 1\n' > "$TMP/hand_sim.txt"
out=$("$LOCKSTEP" embed eval --vec "$TMP/hand.vec" --analogies "$TMP/hand_ana.txt" \
      --similarity "$TMP/hand_sim.txt" 2>&1)
if echo "$out" | grep -q "analogy accuracy 0.5000 (1 / 2), coverage 2 of 3 questions" &&
    echo "$out" | grep -q "similarity spearman -0.1054 over 4 of 5 pairs"; then
    ok "eval on hand-made vectors: accuracy 1/2, Spearman -0.1054 with ties"
else
    bad "eval on hand-made vectors: $out"
fi
out=$("$LOCKSTEP" embed analogy --vec "$TMP/hand.vec" a b e --k 1 2>&1)
[ "$(echo "$out" | cut -f1)" = d ] && ok "analogy a:b::e:? -> d" || bad "analogy a:b::e:? gave '$out'"

D=$HERE/data/desc_small
CLS=(--data "$D/train.tsv" --valid "$D/valid.tsv" --test "$D/test.tsv" --batch-size 32
     --steps 60 --log-every 10 --min-count 1 --lr 0.05)
train onehot --model onehot-logreg "${CLS[@]}"
train bowlr --model bow-logreg "${CLS[@]}"
for m in onehot bowlr; do
    grep -q "test step 60: loss [0-9.]*  acc" "$TMP/$m.log" && ok "$m: test accuracy reported" ||
        bad "$m: no test accuracy"
done

[ "$fails" = 0 ] && echo "e2e_embed: all passed" || echo "e2e_embed: $fails failed"
exit $((fails > 0))
