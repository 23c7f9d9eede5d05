#!/usr/bin/python3
"""ckpt_compare.py A B [--exact | --rtol X] [--optim] [--skip SUBSTRING ...]

Compares the parameters (and with --optim the optimizer state) of two lockstep
checkpoints with h5py. Exits 0 when every tensor agrees, 1 otherwise, printing the worst
tensor. --exact demands identical bits; --rtol X bounds max|a-b| / max|a| per tensor.
--skip leaves out tensors whose name contains SUBSTRING (e.g. attention key biases, whose
gradient is zero up to rounding, so that Adam turns rounding noise into full steps).
"""
import sys

import h5py
import numpy as np


def tensors(f, root):
    out = {}
    if root not in f:
        return out

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = obj[()]

    f[root].visititems(visit)
    return out


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip())
        return 2
    a_path, b_path = argv[1], argv[2]
    exact = "--exact" in argv
    rtol = float(argv[argv.index("--rtol") + 1]) if "--rtol" in argv else 1e-5
    roots = ["params"] + (["optim"] if "--optim" in argv else [])
    skips = [argv[i + 1] for i, a in enumerate(argv) if a == "--skip" and i + 1 < len(argv)]
    worst = (0.0, None)
    with h5py.File(a_path, "r") as fa, h5py.File(b_path, "r") as fb:
        for root in roots:
            ta, tb = tensors(fa, root), tensors(fb, root)
            if sorted(ta) != sorted(tb):
                print(f"{root}: different tensor names: {sorted(set(ta) ^ set(tb))}")
                return 1
            if not ta:
                print(f"{root}: no tensors")
                return 1
            for name in sorted(ta):
                if any(k in name for k in skips):
                    continue
                x, y = ta[name], tb[name]
                if x.shape != y.shape:
                    print(f"{root}/{name}: shapes {x.shape} vs {y.shape}")
                    return 1
                if exact:
                    if x.tobytes() != y.tobytes():
                        d = np.max(np.abs(x.astype(np.float64) - y))
                        print(f"{root}/{name}: not bit-identical (max abs diff {d:.3g})")
                        return 1
                    continue
                scale = max(float(np.max(np.abs(x))), 1e-12)
                rel = float(np.max(np.abs(x.astype(np.float64) - y))) / scale
                if rel > worst[0]:
                    worst = (rel, f"{root}/{name}")
    if exact:
        print("identical")
        return 0
    print(f"max relative difference {worst[0]:.3g} ({worst[1]})")
    return 0 if worst[0] <= rtol else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
