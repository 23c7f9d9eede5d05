#!/usr/bin/python3
"""torch_seq.py DIR - cross-check lockstep's sequence layers against PyTorch.

DIR comes from `test_seq --dump DIR`: for each case, the batch, the weights, our outputs
and our gradients of loss = sum(y * dy) + sum(last * dlast) as raw float32 files (format
in tests/test_seq.c). We load the same weights into nn.Conv1d / nn.RNN / nn.LSTM / nn.GRU,
run forward and backward in float64 on the same batch, and compare outputs and gradients.
Exit status 1 on any mismatch beyond 1e-4.

Weight mapping (a rename, no reordering):
  encoder/layer_<l>/fwd/w_ih -> weight_ih_l<l>          w_hh -> weight_hh_l<l>
  encoder/layer_<l>/fwd/b_ih -> bias_ih_l<l>            b_hh -> bias_hh_l<l>
  encoder/layer_<l>/bwd/...  -> the same with the suffix _reverse
Gate blocks are stacked along rows exactly as PyTorch does:
  LSTM rows [0,H) input gate i, [H,2H) forget f, [2H,3H) cell candidate g, [3H,4H) output o
  GRU  rows [0,H) reset r, [H,2H) update z, [2H,3H) new n, with
       n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h
  RNN  one block, h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
Conv1d: our conv_<i>/weight is (F, C, k) = nn.Conv1d(C, F, k).weight; our input is
(B, T, C), PyTorch's (B, C, T). padding same -> padding='same' (left (k-1)//2), valid -> 0.
Padding positions (t >= len) read as zero in our conv; we zero them in the torch input and
compare input gradients at valid positions only. Recurrent cases with lengths use
pack_padded_sequence, whose h_n is the state at each row's true end (reverse: at t = 0).
"""
import os
import struct
import sys
import warnings

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

warnings.filterwarnings("ignore", message="Using padding='same'")

TOL = 1e-4
MAGIC = 0x51534B4C


def load(d, case, name):
    path = os.path.join(d, "%s.%s.bin" % (case, name.replace("/", ".")))
    with open(path, "rb") as f:
        raw = f.read()
    magic, ndim = struct.unpack_from("<ii", raw, 0)
    if magic != MAGIC:
        raise ValueError("%s: bad magic" % path)
    dims = struct.unpack_from("<%di" % ndim, raw, 8)
    data = np.frombuffer(raw, dtype="<f4", offset=8 + 4 * ndim)
    return torch.tensor(data.reshape(dims).astype(np.float64))


failures = []
failed_cases = set()


def compare(case, what, ours, ref, mask=None):
    ours = ours.detach().double()
    ref = ref.detach().double()
    if ours.shape != ref.shape:
        failures.append("%s %s: shape %s vs torch %s" % (case, what, tuple(ours.shape),
                                                          tuple(ref.shape)))
        failed_cases.add(case)
        return
    diff = (ours - ref).abs()
    if mask is not None:
        diff = diff * mask
    err = float((diff / (1.0 + ref.abs())).max()) if diff.numel() else 0.0
    status = "ok" if err <= TOL else "MISMATCH"
    print("  %-44s max err %.2e %s" % (what, err, status))
    if err > TOL:
        failures.append("%s %s: %.3e" % (case, what, err))
        failed_cases.add(case)


def conv_case(d, case, k, same):
    x = load(d, case, "x")          # (B, T, C)
    lens = load(d, case, "len").long()
    W = load(d, case, "weight")     # (F, C, k)
    b = load(d, case, "bias")
    B, T, C = x.shape
    F = W.shape[0]
    valid = (torch.arange(T)[None, :] < lens[:, None]).double()  # (B, T)
    conv = nn.Conv1d(C, F, k, padding="same" if same else 0).double()
    with torch.no_grad():
        conv.weight.copy_(W)
        conv.bias.copy_(b)
    xin = (x * valid[:, :, None]).clone().requires_grad_(True)
    y = conv(xin.transpose(1, 2)).transpose(1, 2)  # (B, To, F)
    dy = load(d, case, "dy")
    (y * dy).sum().backward()
    print(case)
    compare(case, "y", load(d, case, "y"), y)
    compare(case, "dx (valid positions)", load(d, case, "dx"), xin.grad, valid[:, :, None])
    compare(case, "dweight", load(d, case, "dweight"), conv.weight.grad)
    compare(case, "dbias", load(d, case, "dbias"), conv.bias.grad)


def rnn_case(d, case, cell, layers, bidir):
    x = load(d, case, "x")          # (B, T, C)
    lens = load(d, case, "len").long()
    B, T, C = x.shape
    H = load(d, case, "encoder/layer_0/fwd/w_hh").shape[1]
    cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
    net = cls(C, H, num_layers=layers, bidirectional=bool(bidir), batch_first=True).double()
    ours = {}
    for l in range(layers):
        for di, dn in enumerate(["fwd", "bwd"][: 1 + bidir]):
            sfx = "_l%d%s" % (l, "_reverse" if di else "")
            for w, tn in [("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"),
                          ("b_hh", "bias_hh")]:
                name = "encoder/layer_%d/%s/%s" % (l, dn, w)
                with torch.no_grad():
                    getattr(net, tn + sfx).copy_(load(d, case, name))
                ours[tn + sfx] = load(d, case, "grad." + name)
    xin = x.clone().requires_grad_(True)
    packed = pack_padded_sequence(xin, lens, batch_first=True, enforce_sorted=False)
    out, hn = net(packed)
    y, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # (B, T, D*H)
    if cell == "lstm":
        hn = hn[0]
    # h_n: (layers * D, B, H); the top layer's directions, concatenated like our `last`
    D = 1 + bidir
    last = torch.cat([hn[(layers - 1) * D + i] for i in range(D)], dim=1)
    loss = (y * load(d, case, "dy")).sum() + (last * load(d, case, "dlast")).sum()
    loss.backward()
    valid = (torch.arange(T)[None, :] < lens[:, None]).double()[:, :, None]
    print(case)
    compare(case, "y", load(d, case, "y"), y)
    compare(case, "last (h_n)", load(d, case, "last"), last)
    compare(case, "dx", load(d, case, "dx"), xin.grad, valid)
    for tn, g in ours.items():
        compare(case, "d " + tn, g, getattr(net, tn).grad)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: torch_seq.py DIR (from test_seq --dump DIR)")
    d = sys.argv[1]
    torch.set_num_threads(1)
    n = 0
    with open(os.path.join(d, "cases.txt")) as f:
        for line in f:
            p = line.split()
            if not p:
                continue
            if p[0] == "conv":
                conv_case(d, p[1], int(p[2]), int(p[3]))
            elif p[0] == "rnn":
                rnn_case(d, p[1], p[2], int(p[3]), int(p[4]))
            else:
                failures.append("unknown case kind %s" % p[0])
            n += 1
    if n == 0:
        failures.append("no cases in %s/cases.txt" % d)
    if failures:
        print("FAILED: %d mismatches" % len(failures))
        for m in failures:
            print("  " + m)
        print("%d passed, %d failed" % (n - len(failed_cases), len(failed_cases)))
        sys.exit(1)
    print("%d passed, 0 failed" % n)


if __name__ == "__main__":
    main()
