#!/usr/bin/python3
"""check_ckpt_h5py.py - reads a lockstep checkpoint with h5py (no lockstep code) and
asserts its layout: root attributes format/format_version/model/created (as str and
int), /config attributes as str, /train step as an integer, and for each argument
NAME:SHAPE (e.g. params/out/weight:4,3) a float32 dataset of exactly that shape.

Usage: /usr/bin/python3 tests/check_ckpt_h5py.py FILE name:shape ...
Exit status 0 when everything holds, 1 with a one-line reason otherwise."""
import sys

import h5py
import numpy as np


def fail(msg):
    print("check_ckpt_h5py: " + msg, file=sys.stderr)
    sys.exit(1)


def main(argv):
    if len(argv) < 2:
        fail("usage: check_ckpt_h5py.py FILE name:shape ...")
    path = argv[1]
    with h5py.File(path, "r") as f:
        a = f.attrs
        if a.get("format") != "lockstep-checkpoint":
            fail("%s: format attribute is %r" % (path, a.get("format")))
        if not isinstance(a.get("model"), str) or not isinstance(a.get("created"), str):
            fail("%s: model/created are not str attributes" % path)
        v = a.get("format_version")
        if not isinstance(v, (np.integer, int)) or int(v) != 1:
            fail("%s: format_version is %r" % (path, v))
        for k, val in f["config"].attrs.items():
            if not isinstance(val, str):
                fail("%s: /config attribute %s is %r, not str" % (path, k, val))
        if not isinstance(f["train"].attrs.get("step"), np.integer):
            fail("%s: /train step is not an integer" % path)
        for spec in argv[2:]:
            name, _, shape = spec.rpartition(":")
            want = tuple(int(x) for x in shape.split(",") if x != "")
            if name not in f:
                fail("%s: %s is missing" % (path, name))
            d = f[name]
            if not isinstance(d, h5py.Dataset):
                fail("%s: %s is not a dataset" % (path, name))
            if d.shape != want:
                fail("%s: %s has shape %s, expected %s" % (path, name, d.shape, want))
            if d.dtype != np.float32:
                fail("%s: %s has dtype %s, expected float32" % (path, name, d.dtype))
    print("check_ckpt_h5py: %s ok (%d datasets checked)" % (path, len(argv) - 2))


if __name__ == "__main__":
    main(sys.argv)
