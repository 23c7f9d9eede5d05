#!/usr/bin/env bash
# e2e_models.sh LOCKSTEP BUILD_DIR - every model family through the real program on 2
# ranks, on small real fixtures: the training loss falls, evaluation runs, the checkpoint
# is usable by the inference subcommands (translate, generate, info, eval), and the
# image models write their pictures.
set -uo pipefail
LOCKSTEP=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib_e2e.sh" # env, $TMP, ok/bad, train NAME ARGS...

D=$HERE/data/desc_small
CLS=(--data "$D/train.tsv" --valid "$D/valid.tsv" --test "$D/test.tsv" --batch-size 32
     --steps 60 --log-every 10 --min-count 1 --lr 0.01 --dim 16)
train cnn "${CLS[@]}" --model cnn-classifier --filters 16 --width 3
train gru-bi "${CLS[@]}" --model rnn-classifier --cell gru --bidirectional 1 --hidden 16
train lstm-2 "${CLS[@]}" --model rnn-classifier --cell lstm --layers 2 --hidden 16
for m in cnn gru-bi lstm-2; do
    grep -q "test step 60: loss [0-9.]*  acc" "$TMP/$m.log" && ok "$m: test accuracy reported" ||
        bad "$m: no test accuracy"
done

P=$HERE/data/prose_small
train rnn-lm --model rnn-lm --cell lstm --data "$P/train.txt" --valid "$P/valid.txt" \
    --batch-size 16 --seq-len 32 --steps 60 --log-every 10 --hidden 48 --dim 48 --lr 0.005
grep -q "valid step 60: .* ppl [0-9.]*" "$TMP/rnn-lm.log" && ok "rnn-lm: validation perplexity reported" ||
    bad "rnn-lm: no perplexity"
out=$("$LOCKSTEP" generate --ckpt "$TMP/rnn-lm/ckpt_00000060.h5" --prompt "the" --max-out 12 --seed 3 2>&1)
out2=$("$LOCKSTEP" generate --ckpt "$TMP/rnn-lm/ckpt_00000060.h5" --prompt "the" --max-out 12 --seed 3 2>&1)
[ -n "$out" ] && [ "$out" = "$out2" ] && [ "$(echo "$out" | wc -w)" -ge 5 ] &&
    ok "generate: seeded sampling is reproducible: $out" || bad "generate: '$out' vs '$out2'"
train rnn-lm-tbptt --model rnn-lm --cell gru --data "$P/train.txt" --valid "$P/valid.txt" \
    --batch-size 8 --seq-len 32 --steps 60 --log-every 10 --hidden 32 --dim 32 --lr 0.005 \
    --bptt 8 --carry 8 --order lanes

train gpt --model gpt --data "$P/train.txt" --valid "$P/valid.txt" --batch-size 16 --seq-len 32 \
    --steps 60 --log-every 10 --layers 2 --dim 32 --heads 4 --ff 64 --context 32 --lr 0.005 \
    --optimizer adamw --dropout 0.1
out=$("$LOCKSTEP" generate --ckpt "$TMP/gpt/ckpt_00000060.h5" --prompt "the" --max-out 12 --top-k 20 --temperature 0.8 2>&1)
[ "$(echo "$out" | wc -w)" -ge 5 ] && ok "gpt generate: $out" || bad "gpt generate: $out"

# bf16 matmuls (AMX where the CPU has it): trains like fp32, and the same run twice gives
# the same bits
for run in gpt-bf16 gpt-bf16-again; do
    train $run --model gpt --data "$P/train.txt" --valid "$P/valid.txt" --batch-size 16 \
        --seq-len 32 --steps 60 --log-every 10 --layers 2 --dim 32 --heads 4 --ff 64 --context 32 \
        --lr 0.005 --optimizer adamw --dropout 0.1 --matmul bf16
done
grep -q "matmul bf16 on \(amx\|ref\)" "$TMP/gpt-bf16.log" && ok "gpt-bf16: $(grep -o 'matmul bf16 on [a-z]*' "$TMP/gpt-bf16.log")" ||
    bad "gpt-bf16: no 'matmul bf16' in the banner"
v32=$(grep -o 'valid step 60: loss [0-9.]*' "$TMP/gpt.log" | awk '{print $NF}')
v16=$(grep -o 'valid step 60: loss [0-9.]*' "$TMP/gpt-bf16.log" | awk '{print $NF}')
awk -v a="$v32" -v b="$v16" 'BEGIN{exit !(b < 1.05 * a + 0.05)}' &&
    ok "gpt-bf16: validation loss $v16 (the same run in fp32: $v32)" || bad "gpt-bf16: validation loss $v16 against fp32 $v32"
cmp -s "$TMP/gpt-bf16/ckpt_00000060.h5" "$TMP/gpt-bf16-again/ckpt_00000060.h5" ||
    /usr/bin/python3 "$HERE/ckpt_compare.py" "$TMP/gpt-bf16/ckpt_00000060.h5" "$TMP/gpt-bf16-again/ckpt_00000060.h5" --exact > /dev/null &&
    ok "gpt-bf16: a repeated run gives the same weights bit for bit" || bad "gpt-bf16: repeated run differs"

E=$HERE/data/ende_small
S2S=(--model seq2seq --data "$E/train.tsv" --valid "$E/valid.tsv" --batch-size 32 --steps 60
     --log-every 10 --hidden 32 --dim 32 --lr 0.01 --min-count 1 --eval-every 30)
train s2s-attn "${S2S[@]}" --attention bahdanau
train s2s-plain "${S2S[@]}" --attention none --cell gru
train transformer --model transformer --data "$E/train.tsv" --valid "$E/valid.tsv" --batch-size 32 \
    --steps 60 --log-every 10 --layers 2 --dim 32 --heads 4 --ff 64 --lr 0.003 --min-count 1 \
    --eval-every 30 --eval-beam 2
grep -q "valid step 60: .*BLEU [0-9.]* exact [0-9.]* (beam 2)" "$TMP/transformer.log" && ok "transformer: BLEU with beam 2 during evaluation" ||
    bad "transformer: no BLEU"
"$LOCKSTEP" translate --ckpt "$TMP/transformer/ckpt_00000060.h5" --beam 3 < "$E/valid.tsv" > /dev/null 2>"$TMP/tt.err" &&
    ok "transformer translate --beam 3" || { bad "transformer translate"; cat "$TMP/tt.err"; }
grep -q "valid step 60: .*BLEU [0-9.]* exact [0-9.]* (beam 1)" "$TMP/s2s-attn.log" && ok "seq2seq: validation BLEU reported" ||
    bad "seq2seq: no BLEU"
cut -f1 "$E/valid.tsv" > "$TMP/src.txt"
cut -f2 "$E/valid.tsv" > "$TMP/ref.txt"
for beam in 1 4; do
    if "$LOCKSTEP" translate --ckpt "$TMP/s2s-attn/ckpt_00000060.h5" --beam $beam < "$TMP/src.txt" > "$TMP/hyp$beam.txt" 2> "$TMP/tr.err" &&
       [ "$(wc -l < "$TMP/hyp$beam.txt")" -eq "$(wc -l < "$TMP/src.txt")" ]; then
        ok "translate --beam $beam: $(wc -l < "$TMP/hyp$beam.txt") lines; $("$LOCKSTEP" bleu "$TMP/ref.txt" "$TMP/hyp$beam.txt" | head -1)"
    else
        bad "translate --beam $beam"; cat "$TMP/tr.err"
    fi
done

I=$HERE/data/digits_small.h5
train ae --model autoencoder --data "$I" --valid "$I" --test "$I" --hidden 32,8 --batch-size 20 \
    --steps 60 --log-every 10 --lr 0.01 --noise mask --noise-level 0.2
train vae --model vae --data "$I" --valid "$I" --hidden 32 --latent 4 --batch-size 20 --steps 60 \
    --log-every 10 --lr 0.01
for f in ae/reconstructions.png vae/samples.png vae/interpolation.png; do
    [ "$(head -c 8 "$TMP/$f" | od -An -tx1 | tr -d ' ')" = "89504e470d0a1a0a" ] && ok "picture $f" ||
        bad "no PNG $f"
done
mpirun -np 2 "$LOCKSTEP" train --model pca --data "$I" --valid "$I" --out "$TMP/pca" --components 8 \
    --threads 1 > "$TMP/pca.log" 2>&1 && grep -q "valid step 1: loss" "$TMP/pca.log" &&
    ok "pca: fitted in one pass" || { bad "pca"; tail -3 "$TMP/pca.log"; }

C=$HERE/data/captions_small.h5
train captioner --model captioner --data "$C" --valid "$C" --test "$C" --batch-size 20 --steps 60 \
    --log-every 10 --lr 0.003 --eval-every 30 --hidden 32 --channels 8,16
grep -q "test step 60: .*BLEU [0-9.]* exact [0-9.]*" "$TMP/captioner.log" &&
    [ "$(head -c 8 "$TMP/captioner/attention.png" | od -An -tx1 | tr -d ' ')" = "89504e470d0a1a0a" ] &&
    ok "captioner: test BLEU and exact match, attention picture" || bad "captioner"

# info and eval on a checkpoint
"$LOCKSTEP" info "$TMP/cnn/ckpt_00000060.h5" > "$TMP/info.txt" 2>&1 &&
    grep -q "cnn-classifier" "$TMP/info.txt" && grep -q "embedding" "$TMP/info.txt" &&
    ok "info lists model and parameters" || { bad "info"; head -5 "$TMP/info.txt"; }
mpirun -np 2 "$LOCKSTEP" eval --ckpt "$TMP/cnn/ckpt_00000060.h5" > "$TMP/eval.txt" 2>&1 &&
    diff <(grep -o 'test step 60: .*' "$TMP/cnn.log") <(grep -o 'test step 60: .*' "$TMP/eval.txt") > /dev/null &&
    ok "eval of the checkpoint reproduces the final test metrics" || { bad "eval"; cat "$TMP/eval.txt" | tail -3; }

if [ "$fails" -ne 0 ]; then echo "e2e_models: $fails check(s) failed"; exit 1; fi
echo "e2e_models: all checks passed"
