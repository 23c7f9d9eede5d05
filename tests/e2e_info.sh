#!/usr/bin/env bash
# e2e_info.sh LOCKSTEP BUILD_DIR - `lockstep info CKPT` against h5py as the oracle: the same
# model, step, rank count, data position, every parameter with its shape and size, the
# totals, the optimizer slots, the vocabulary sizes, the number of evaluation records and
# the configuration; a file that is not a checkpoint is an error.
set -uo pipefail
LOCKSTEP=$(realpath "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
export OMPI_MCA_rmaps_base_oversubscribe=1 LOCKSTEP_PROGRESS=lines
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
D=$HERE/data/desc_small
mpirun -np 2 "$LOCKSTEP" train --model bow-classifier --data "$D/train.tsv" --valid "$D/valid.tsv" \
    --min-count 1 --dim 8 --steps 60 --batch-size 16 --eval-every 20 --threads 1 \
    --out "$TMP/run" > "$TMP/train.log" 2>&1 || { echo "FAIL train"; tail -3 "$TMP/train.log"; exit 1; }
CK=$TMP/run/ckpt_00000060.h5
"$LOCKSTEP" info "$CK" > "$TMP/info.txt" 2>&1 || { echo "FAIL info"; cat "$TMP/info.txt"; exit 1; }
/usr/bin/python3 - "$CK" "$TMP/info.txt" << 'PY'
import re, sys
import h5py
ck, info = sys.argv[1], open(sys.argv[2]).read()
f = h5py.File(ck, "r")
fails = 0
def want(pattern, what):
    global fails
    if re.search(pattern, info, re.M):
        print("ok   " + what)
    else:
        print("FAIL " + what + ": no /" + pattern + "/")
        fails += 1
attr = lambda s: s.decode() if isinstance(s, bytes) else str(s)
t = f["train"].attrs
want(r"^model: " + re.escape(attr(f.attrs["model"])) + "$", "model")
want(r"^format: lockstep-checkpoint version %d" % f.attrs["format_version"], "format and version")
want(r"^step: %d  epoch %d  written by %d ranks$" % (t["step"], t["epoch"], t["world_size"]),
     "step, epoch, rank count")
want(r"^seen: %d examples, %d tokens; data position %d$" % (t["examples_seen"], t["tokens_seen"], t["data_pos"]),
     "examples, tokens, data position")
want(r"at step %d " % t["best_step"], "best step")
n_par = n_bytes = n_t = 0
def visit(name, obj):
    global n_par, n_bytes, n_t
    if isinstance(obj, h5py.Dataset):
        shape = "(" + ",".join(str(d) for d in obj.shape) + ")"
        want(r"^  " + re.escape(name) + r" +" + re.escape(shape) + r" +%d$" % obj.size,
             "parameter %s %s" % (name, shape))
        n_par += obj.size; n_bytes += obj.size * obj.dtype.itemsize; n_t += 1
f["params"].visititems(visit)
want(r"^total: %d tensors, %d parameters, %d bytes" % (n_t, n_par, n_bytes), "totals")
slots = sorted(f["optim"].keys())
want(r"^optimizer: %d slots \(%s\), %d bytes$" % (len(slots), ", ".join(slots), len(slots) * n_bytes),
     "optimizer slots")
for side in f["vocab"]:
    if not side.endswith("_count"):
        want(r"^vocabulary:.* %s %d\b" % (side, len(f["vocab"][side])), "vocabulary " + side)
want(r"^metrics: %d evaluation records" % len(f["metrics"]), "evaluation records")
cfg = f["config"].attrs
want(r"^config: %d keys$" % len(cfg), "config key count")
for k in ("model", "dim", "batch-size", "min-count"):
    want(r"^  %s = %s$" % (re.escape(k), re.escape(attr(cfg[k]))), "config " + k)
sys.exit(1 if fails else 0)
PY
st=$?
if "$LOCKSTEP" info "$D/train.tsv" > "$TMP/bad.txt" 2>&1; then
    echo "FAIL info on a text file succeeded"; st=1
else
    echo "ok   not a checkpoint: $(head -1 "$TMP/bad.txt")"
fi
[ $st -eq 0 ] && echo "e2e_info: all checks passed" || echo "e2e_info: failed"
exit $st
