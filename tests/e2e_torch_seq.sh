#!/bin/bash
# e2e_torch_seq.sh <lockstep-binary> <build-dir> - PyTorch cross-check of the sequence
# layers: build-dir/test_seq --dump writes a batch, weights, outputs and gradients of
# Conv1D and RNN/LSTM/GRU stacks; tests/torch_seq.py loads the same weights into
# nn.Conv1d / nn.RNN / nn.LSTM / nn.GRU and fails on any difference beyond 1e-4.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${2:?usage: e2e_torch_seq.sh <lockstep-binary> <build-dir>}
py=/usr/bin/python3
if ! "$py" -c 'import torch, numpy' 2>/dev/null; then
    echo "e2e_torch_seq: $py cannot import torch and numpy (apt-get install python3-torch)" >&2
    exit 1
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$build/test_seq" --dump "$dir"
OMP_NUM_THREADS=1 "$py" "$here/torch_seq.py" "$dir"
