#!/bin/bash
# e2e_torch_gpt.sh - the gpt model against PyTorch: same logits within 1e-4, same loss and
# the same parameter gradients, for a pre-LN/GELU/learned/tied and a post-LN/ReLU/
# sinusoidal/untied/label-smoothed model, and two encoder-decoder transformers (pre-LN/ReLU/
# sinusoidal/tied/smoothed with source padding; post-LN/GELU/learned/untied), and the first
# gpt again with --matmul bf16 (on AMX where present) against PyTorch with every matrix
# product's inputs rounded to bf16, forward and backward (torch_gpt.py bf16_matmuls), to
# the same tolerances.
#   bash e2e_torch_gpt.sh <lockstep-binary> <build-dir>     (CTest runs it from tests/)
# test_attn --dump writes weights, tokens, logits, loss and gradients as raw float32 files;
# torch_gpt.py rebuilds the module from those weights and compares. Exit 1 on mismatch.
set -euo pipefail
build=${2:?usage: e2e_torch_gpt.sh <lockstep-binary> <build-dir>}
here=$(cd "$(dirname "$0")" && pwd)
dump=$(mktemp -d)
trap 'rm -rf "$dump"' EXIT
"$build/test_attn" --dump "$dump"
OMP_NUM_THREADS=1 /usr/bin/python3 "$here/torch_gpt.py" check "$dump"
