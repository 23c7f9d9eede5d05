#!/usr/bin/python3
"""check_ckpt_h5py.py - reads a lockstep checkpoint with h5py (no lockstep code) and
asserts its layout: root attributes format/format_version/model/created (as str and
int), /config attributes as str, /train step as an integer, for each argument
NAME:SHAPE (e.g. params/out/weight:4,3) a float32 dataset of exactly that shape, and
every checksum (each dataset's, config_checksum, train_checksum, the root's), recomputed
here from the layout in io/ckpt.c with this file's own implementation of the algorithm
the file names ("mulrot4x64", see io/hash.c, or the earlier "fnv1a64").

Usage: /usr/bin/python3 tests/check_ckpt_h5py.py FILE name:shape ...
Exit status 0 when everything holds, 1 with a one-line reason otherwise."""
import struct
import sys

import h5py
import numpy as np

M64 = (1 << 64) - 1
FNV_BASIS, FNV_PRIME, MR_K = 0xCBF29CE484222325, 0x100000001B3, 0x9E3779B97F4A7C15


def fnv1a64(data, h=FNV_BASIS):
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & M64
    return h


def mulrot4x64(data):
    """io/hash.c: four lanes over 32-byte blocks, FNV-1a 64 over lanes, tail, length."""
    n = len(data)
    lanes = [(FNV_BASIS + j * MR_K) & M64 for j in range(4)]
    whole = n // 32 * 32
    words = struct.unpack("<%dQ" % (whole // 8), data[:whole])
    for k in range(0, len(words), 4):
        for j in range(4):
            x = ((lanes[j] ^ words[k + j]) * MR_K) & M64
            lanes[j] = ((x << 29) | (x >> 35)) & M64
    return fnv1a64(struct.pack("<4Q", *lanes) + data[whole:] + struct.pack("<Q", n))


HASHES = {"mulrot4x64": mulrot4x64, "fnv1a64": fnv1a64}


def dataset_bytes(d):
    """Elements in row-major order, little-endian in the stored type; strings + NUL."""
    if h5py.check_string_dtype(d.dtype) is not None:
        vals = d[()].ravel() if d.shape else [d[()]]
        return b"".join((v if isinstance(v, bytes) else v.encode()) + b"\0" for v in vals)
    return np.ascontiguousarray(d[()]).astype(d.dtype.newbyteorder("<")).tobytes()


def check_sums(path, f):
    """Recomputes every checksum; returns (algorithm, datasets checked) or fails."""
    alg = f.attrs.get("checksum_algorithm")
    if "checksum" not in f.attrs:
        return None, 0
    if alg not in HASHES:
        fail("%s: unknown checksum_algorithm %r" % (path, alg))
    hsh = HASHES[alg]
    fold = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            want = int(obj.attrs["checksum"])
            have = hsh(dataset_bytes(obj))
            if have != want:
                fail("%s: /%s has checksum %016x, recomputed %016x" % (path, name, want, have))
            fold.append(name.encode() + b"\0" + struct.pack("<Q", want))
    f.visititems(visit)
    cfg = f["config"]
    order = []
    try:
        h5py.h5a.iterate(cfg.id, lambda n, *_: order.append(n) and None,
                         index_type=h5py.h5.INDEX_CRT_ORDER)
    except Exception:
        order = sorted(k.encode() for k in cfg.attrs.keys())
    cs = b"".join(k + b"\0" + cfg.attrs[k.decode()].encode() + b"\0" for k in order)
    cs += b"".join(f.attrs[k].encode() + b"\0" for k in ("model", "created"))
    t = f["train"].attrs
    ts = b"".join(struct.pack("<q", int(t[k])) for k in ("step", "epoch", "tokens_seen",
                  "examples_seen", "world_size", "data_pos"))
    ts += struct.pack("<d", float(t["best_metric"]))
    ts += b"".join(struct.pack("<q", int(t[k])) for k in ("best_step", "bad_evals"))
    for what, have, want in (("config_checksum", hsh(cs), f.attrs["config_checksum"]),
                             ("train_checksum", hsh(ts), f.attrs["train_checksum"])):
        if have != int(want):
            fail("%s: %s is %016x, recomputed %016x" % (path, what, int(want), have))
    root = hsh(b"".join(fold) + struct.pack("<QQ", hsh(cs), hsh(ts)))
    if root != int(f.attrs["checksum"]):
        fail("%s: root checksum is %016x, recomputed %016x" % (path, int(f.attrs["checksum"]),
                                                                 root))
    return alg, len(fold)


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
        alg, nsum = check_sums(path, f)
    print("check_ckpt_h5py: %s ok (%d datasets checked; checksums: %s)" %
          (path, len(argv) - 2, "%d datasets, %s" % (nsum, alg) if alg else "none"))


if __name__ == "__main__":
    main(sys.argv)
