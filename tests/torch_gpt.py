#!/usr/bin/python3
"""torch_gpt.py - lockstep's gpt and transformer models as PyTorch modules, and the
cross-check against C.

    /usr/bin/python3 torch_gpt.py check DIR        # DIR written by `test_attn --dump DIR`
    /usr/bin/python3 torch_gpt.py logits CKPT.h5 ID ID ...   # logits of a lockstep checkpoint

`check` builds the PyTorch module from the raw weights the C side dumped for every model
in DIR, runs the same tokens, and fails (exit 1) unless the logits agree within 1e-4 and
every parameter gradient of the same loss agrees (|dc - dt| <= 1e-5 + 1e-3 |dt|).

Weight mapping (lockstep name -> PyTorch):
    wte (V,C)                   -> tok.weight (nn.Embedding); tied: logits = h @ wte.T
    wpe (context,C)             -> pos.weight (pos=learned); sinusoidal: a fixed buffer
    layer_l/ln1/{g,b}           -> blocks[l].ln1.{weight,bias}   (nn.LayerNorm, eps 1e-5)
    layer_l/attn/w_q,w_k,w_v    -> blocks[l].attn.in_proj_weight = cat(w_q, w_k, w_v)
    layer_l/attn/b_q,b_k,b_v    -> blocks[l].attn.in_proj_bias   = cat(b_q, b_k, b_v)
    layer_l/attn/{w_o,b_o}      -> blocks[l].attn.out_proj.{weight,bias}
    layer_l/ln2/{g,b}           -> blocks[l].ln2.{weight,bias}
    layer_l/ffn/{w1,b1,w2,b2}   -> blocks[l].fc1.{weight,bias}, blocks[l].fc2.{weight,bias}
    ln_f/{g,b}                  -> ln_f.{weight,bias}  (norm=pre only)
    lm_head/w (V,C)             -> head.weight (tie=0 only)
transformer: the same block names under encoder/ and decoder/ (emb, pos, layer_l/...,
ln_f), plus decoder/layer_l/ln_cross/{g,b} -> blocks[l].ln_cross and decoder/layer_l/cross/
{w_q,w_k,w_v,b_q,b_k,b_v,w_o,b_o} -> blocks[l].cross (nn.MultiheadAttention: queries from the
decoder, keys and values from the encoder output), decoder/out/w -> head (tie=0). Source
keys after the last non-padding id are masked; the decoder reads BOS (2) + y shifted right.
Padding id 0 in the input embeds as zeros (plus its position); targets equal to 0 are
ignored by the loss. Pre-LN: x += attn(ln1(x)); x += ffn(ln2(x)); ln_f. Post-LN:
x = ln1(x + attn(x)); x = ln2(x + ffn(x)). GELU is the tanh approximation.
"""
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PAD = 0


class Block(nn.Module):
    """Self-attention (causal, or with key padding), optional cross-attention, FFN."""

    def __init__(self, C, NH, FF, act, post, causal=True, cross=False):
        super().__init__()
        self.post, self.causal = post, causal
        self.ln1 = nn.LayerNorm(C, eps=1e-5)
        self.attn = nn.MultiheadAttention(C, NH, bias=True, batch_first=True)
        if cross:
            self.ln_cross = nn.LayerNorm(C, eps=1e-5)
            self.cross = nn.MultiheadAttention(C, NH, bias=True, batch_first=True)
        else:
            self.cross = None
        self.ln2 = nn.LayerNorm(C, eps=1e-5)
        self.fc1 = nn.Linear(C, FF)
        self.fc2 = nn.Linear(FF, C)
        self.act = nn.GELU(approximate="tanh") if act == "gelu" else nn.ReLU()

    def _attn(self, x, pad):
        T = x.shape[1]
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1) if self.causal else None
        return self.attn(x, x, x, attn_mask=causal, key_padding_mask=pad, need_weights=False)[0]

    def forward(self, x, pad=None, mem=None, mem_pad=None):
        ffn = lambda h: self.fc2(self.act(self.fc1(h)))
        cross = lambda h: self.cross(h, mem, mem, key_padding_mask=mem_pad, need_weights=False)[0]
        if self.post:
            x = self.ln1(x + self._attn(x, pad))
            if self.cross is not None:
                x = self.ln_cross(x + cross(x))
            return self.ln2(x + ffn(x))
        x = x + self._attn(self.ln1(x), pad)
        if self.cross is not None:
            x = x + cross(self.ln_cross(x))
        return x + ffn(self.ln2(x))


def block_mapping(b, p, m):
    """Adds lockstep names of block b under prefix p to mapping m."""
    C = b.ln1.weight.shape[0]
    m[p + "ln1/g"], m[p + "ln1/b"] = (b.ln1.weight, None), (b.ln1.bias, None)
    mods = [("attn/", b.attn)] + ([("cross/", b.cross)] if b.cross is not None else [])
    for sub, a in mods:
        for k, n in enumerate("qkv"):
            rows = slice(k * C, (k + 1) * C)
            m[p + sub + "w_" + n] = (a.in_proj_weight, rows)
            m[p + sub + "b_" + n] = (a.in_proj_bias, rows)
        m[p + sub + "w_o"] = (a.out_proj.weight, None)
        m[p + sub + "b_o"] = (a.out_proj.bias, None)
    if b.cross is not None:
        m[p + "ln_cross/g"], m[p + "ln_cross/b"] = (b.ln_cross.weight, None), (b.ln_cross.bias, None)
    m[p + "ln2/g"], m[p + "ln2/b"] = (b.ln2.weight, None), (b.ln2.bias, None)
    m[p + "ffn/w1"], m[p + "ffn/b1"] = (b.fc1.weight, None), (b.fc1.bias, None)
    m[p + "ffn/w2"], m[p + "ffn/b2"] = (b.fc2.weight, None), (b.fc2.bias, None)


# ---- lockstep's --matmul bf16: every GEMM rounds its two inputs to bf16 (sums in fp32),
# in the forward pass and in each product of the backward pass. Emulated here with the
# module's own ops: linear, bmm and baddbmm (what nn.MultiheadAttention calls) and the
# tied output layer are swapped for functions that round their inputs and whose backward
# rounds the incoming gradient and the saved inputs the same way.

def bf16(t):
    return t.to(torch.bfloat16).to(torch.float32)


_linear, _bmm, _baddbmm = F.linear, torch.bmm, torch.baddbmm


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_b = b is not None
        return _linear(bf16(x), bf16(w), b)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
        gx = (bf16(g2) @ bf16(w)).reshape(x.shape)
        gw = bf16(g2).t() @ bf16(x2)
        gb = g2.sum(0) if ctx.has_b else None  # lockstep sums the bias gradient in fp32
        return gx, gw, gb


class _Bmm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _bmm(bf16(a), bf16(b))

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return _bmm(bf16(g), bf16(b).transpose(1, 2)), _bmm(bf16(a).transpose(1, 2), bf16(g))


def _bf16_linear(x, w, b=None):
    return _Linear.apply(x, w, b)


def _bf16_baddbmm(m, a, b, *, beta=1, alpha=1):
    assert beta == 1 and alpha == 1
    return m + _Bmm.apply(a, b)


class bf16_matmuls:
    """with bf16_matmuls(): the module's matrix products as lockstep's --matmul bf16."""

    def __enter__(self):
        F.linear, torch.bmm, torch.baddbmm = _bf16_linear, _Bmm.apply, _bf16_baddbmm
        MATMUL["bf16"] = True

    def __exit__(self, *exc):
        F.linear, torch.bmm, torch.baddbmm = _linear, _bmm, _baddbmm
        MATMUL["bf16"] = False


MATMUL = {"bf16": False}


def out_proj(x, w):
    """x @ w^T for the tied output layer (bf16 inside bf16_matmuls)."""
    return _bf16_linear(x, w) if MATMUL["bf16"] else x @ w.t()


def sinusoid_table(T, C):
    t = np.arange(T, dtype=np.float64)[:, None]
    i = np.arange(C)
    freq = np.power(10000.0, -(i - (i & 1)) / C)
    a = t * freq[None, :]
    return torch.tensor(np.where(i & 1, np.cos(a), np.sin(a)), dtype=torch.float32)


class Loadable:
    def load(self, weights):
        """weights: lockstep name -> numpy array. Every parameter must be given."""
        m = self.mapping()
        missing = set(m) - set(weights)
        extra = set(weights) - set(m)
        if missing or extra:
            raise ValueError("weights missing %s, unexpected %s" % (sorted(missing), sorted(extra)))
        with torch.no_grad():
            for name, (t, rows) in m.items():
                w = torch.tensor(weights[name])
                dst = t if rows is None else t[rows]
                if tuple(dst.shape) != tuple(w.shape):
                    raise ValueError("%s: shape %s, module has %s" % (name, w.shape, dst.shape))
                dst.copy_(w)

    def grads(self):
        return {n: (t.grad if rows is None else t.grad[rows]).numpy()
                for n, (t, rows) in self.mapping().items()}

class GPT(Loadable, nn.Module):
    def __init__(self, cfg):
        super().__init__()
        V, C = int(cfg["vocab"]), int(cfg.get("dim", 256))
        L, NH = int(cfg.get("layers", 4)), int(cfg.get("heads", 4))
        FF, T = int(cfg.get("ff", 1024)), int(cfg.get("context", 128))
        self.post = cfg.get("norm", "pre") == "post"
        self.tie = int(cfg.get("tie", 1)) != 0
        self.learned = cfg.get("pos", "learned") == "learned"
        act = cfg.get("activation", "gelu")
        self.tok = nn.Embedding(V, C)
        if self.learned:
            self.pos = nn.Embedding(T, C)
        else:
            self.register_buffer("pos_table", sinusoid_table(T, C))
        self.blocks = nn.ModuleList([Block(C, NH, FF, act, self.post) for _ in range(L)])
        self.ln_f = None if self.post else nn.LayerNorm(C, eps=1e-5)
        self.head = None if self.tie else nn.Linear(C, V, bias=False)

    def forward(self, ids):
        T = ids.shape[1]
        x = self.tok(ids) * (ids != PAD).unsqueeze(-1).float()
        x = x + (self.pos.weight[:T] if self.learned else self.pos_table[:T])
        for b in self.blocks:
            x = b(x)
        if self.ln_f is not None:
            x = self.ln_f(x)
        return out_proj(x, self.tok.weight) if self.tie else self.head(x)

    def mapping(self):
        """lockstep name -> (PyTorch tensor, slice of rows or None)."""
        m = {"wte": (self.tok.weight, None)}
        if self.learned:
            m["wpe"] = (self.pos.weight, None)
        for l, b in enumerate(self.blocks):
            block_mapping(b, "layer_%d/" % l, m)
        if self.ln_f is not None:
            m["ln_f/g"], m["ln_f/b"] = (self.ln_f.weight, None), (self.ln_f.bias, None)
        if not self.tie:
            m["lm_head/w"] = (self.head.weight, None)
        return m

def padding_embed(emb, ids):
    return emb(ids) * (ids != PAD).unsqueeze(-1).float()


class Transformer(Loadable, nn.Module):
    """lockstep's --model transformer: names encoder/... and decoder/... as in models/gpt.c."""

    def __init__(self, cfg):
        super().__init__()
        Vs, Vt = int(cfg["vocab"]), int(cfg.get("vocab_tgt", cfg["vocab"]))
        C, L, NH = int(cfg.get("dim", 256)), int(cfg.get("layers", 3)), int(cfg.get("heads", 4))
        FF, T = int(cfg.get("ff", 1024)), int(cfg.get("context", 128))
        post = cfg.get("norm", "pre") == "post"
        act = cfg.get("activation", "relu")
        self.learned = cfg.get("pos", "sinusoidal") == "learned"
        self.tie = int(cfg.get("tie", 1)) != 0
        self.enc_emb, self.dec_emb = nn.Embedding(Vs, C), nn.Embedding(Vt, C)
        if self.learned:
            self.enc_pos, self.dec_pos = nn.Embedding(T, C), nn.Embedding(T, C)
        else:
            self.register_buffer("pos_table", sinusoid_table(T, C))
        self.enc = nn.ModuleList([Block(C, NH, FF, act, post, causal=False) for _ in range(L)])
        self.dec = nn.ModuleList([Block(C, NH, FF, act, post, causal=True, cross=True)
                                  for _ in range(L)])
        self.enc_ln = None if post else nn.LayerNorm(C, eps=1e-5)
        self.dec_ln = None if post else nn.LayerNorm(C, eps=1e-5)
        self.head = None if self.tie else nn.Linear(C, Vt, bias=False)

    def _pos(self, which, T):
        return getattr(self, which).weight[:T] if self.learned else self.pos_table[:T]

    def forward(self, x, y):
        """x (B,T) source ids, y (B,U) targets: logits (B,U,Vt) for decoder input BOS + y."""
        din = torch.cat([torch.full_like(y[:, :1], 2), y[:, :-1]], dim=1)
        nonpad = (x != PAD).long()
        src_len = x.shape[1] - torch.argmax(torch.flip(nonpad, [1]), dim=1)
        src_len = torch.where(nonpad.sum(1) > 0, src_len, torch.zeros_like(src_len))
        pad = torch.arange(x.shape[1])[None, :] >= src_len[:, None]
        h = padding_embed(self.enc_emb, x) + self._pos("enc_pos", x.shape[1])
        for b in self.enc:
            h = b(h, pad=pad)
        mem = h if self.enc_ln is None else self.enc_ln(h)
        h = padding_embed(self.dec_emb, din) + self._pos("dec_pos", din.shape[1])
        for b in self.dec:
            h = b(h, mem=mem, mem_pad=pad)
        if self.dec_ln is not None:
            h = self.dec_ln(h)
        return h @ self.dec_emb.weight.t() if self.tie else self.head(h)

    def mapping(self):
        m = {"encoder/emb": (self.enc_emb.weight, None), "decoder/emb": (self.dec_emb.weight, None)}
        if self.learned:
            m["encoder/pos"] = (self.enc_pos.weight, None)
            m["decoder/pos"] = (self.dec_pos.weight, None)
        for side, blocks, ln in (("encoder/", self.enc, self.enc_ln), ("decoder/", self.dec, self.dec_ln)):
            for l, b in enumerate(blocks):
                block_mapping(b, side + "layer_%d/" % l, m)
            if ln is not None:
                m[side + "ln_f/g"], m[side + "ln_f/b"] = (ln.weight, None), (ln.bias, None)
        if not self.tie:
            m["decoder/out/w"] = (self.head.weight, None)
        return m


def read_raw(path):
    with open(path, "rb") as f:
        kind, ndim = struct.unpack("<ii", f.read(8))
        dims = struct.unpack("<%di" % ndim, f.read(4 * ndim))
        data = np.frombuffer(f.read(), dtype=np.float32 if kind == 0 else np.int32)
    return data.reshape(dims).copy()


def check_dir(d):
    cfg = dict(line.strip().split("=", 1) for line in open(os.path.join(d, "config.txt")) if "=" in line)
    files = os.listdir(d)
    weights = {f[2:-4].replace(".", "/"): read_raw(os.path.join(d, f)) for f in files if f.startswith("w.")}
    cgrads = {f[2:-4].replace(".", "/"): read_raw(os.path.join(d, f)) for f in files if f.startswith("g.")}
    x = torch.tensor(read_raw(os.path.join(d, "tokens_x.bin")), dtype=torch.long)
    y = torch.tensor(read_raw(os.path.join(d, "tokens_y.bin")), dtype=torch.long)
    clogits = read_raw(os.path.join(d, "logits.bin"))
    closs, scale = read_raw(os.path.join(d, "loss.bin"))
    torch.manual_seed(0)
    model = Transformer(cfg) if cfg.get("model") == "transformer" else GPT(cfg)
    model.load(weights)
    # bf16: the same tolerances as fp32. (A product whose fp32 inputs differ in the last
    # bit could round to neighbouring bf16 values 2^-8 apart; on this small model it does
    # not happen, and the agreement is ~1e-7 against ~1e-2 between bf16 and fp32, which
    # the script prints for comparison.)
    is16 = cfg.get("matmul") == "bf16"
    if is16:
        with bf16_matmuls():
            logits = model(x)
        with torch.no_grad():
            ref32 = model(x)
        print("%s (engine %s): max |logits fp32 - bf16| in torch = %.2e" % (
            os.path.basename(d), cfg.get("engine", "?"),
            np.abs(ref32.numpy() - logits.detach().numpy()).max()))
    else:
        logits = model(x, y) if cfg.get("model") == "transformer" else model(x)
    ok = True
    dl = np.abs(logits.detach().numpy() - clogits).max()
    print("%s: max |logits C - torch| = %.2e" % (os.path.basename(d), dl))
    ok &= bool(dl <= 1e-4)
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1), ignore_index=PAD, reduction="sum",
                           label_smoothing=float(cfg.get("label-smoothing",
                                                         0.1 if cfg.get("model") == "transformer" else 0)))
    print("  loss C %.6f torch %.6f" % (closs, loss.item()))
    ok &= bool(abs(closs - loss.item()) <= 1e-4 * max(1.0, abs(loss.item())))
    (loss * float(scale)).backward()
    worst = ("", 0.0)
    for name, gt in model.grads().items():
        gc = cgrads[name]
        excess = np.abs(gc - gt) - (1e-5 + 1e-3 * np.abs(gt))
        e = float(excess.max())
        if e > worst[1] or not worst[0]:
            worst = (name, e)
        if e > 0:
            ok = False
            print("  gradient of %s differs: max |dC - dtorch| %.2e (max |dtorch| %.2e)"
                  % (name, np.abs(gc - gt).max(), np.abs(gt).max()))
    print("  %d gradients compared; %s" % (len(cgrads), "all agree" if ok else "MISMATCH"))
    return ok


def load_checkpoint(path):
    """lockstep HDF5 checkpoint -> (config dict, weights dict)."""
    import h5py
    with h5py.File(path, "r") as f:
        cfg = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in f["config"].attrs.items()}
        weights = {}
        f["params"].visititems(lambda n, o: weights.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    if "vocab" not in cfg:
        cfg["vocab"] = str(weights["wte"].shape[0])
    if "context" not in cfg and "wpe" in weights:
        cfg["context"] = str(weights["wpe"].shape[0])
    return cfg, weights


def main(argv):
    if len(argv) >= 3 and argv[1] == "check":
        d = argv[2]
        subs = sorted(s for s in os.listdir(d) if os.path.isfile(os.path.join(d, s, "config.txt")))
        if not subs:
            print("no dumped models in %s" % d)
            return 1
        return 0 if all([check_dir(os.path.join(d, s)) for s in subs]) else 1
    if len(argv) >= 4 and argv[1] == "logits":
        cfg, weights = load_checkpoint(argv[2])
        model = GPT(cfg)
        model.load(weights)
        ids = torch.tensor([[int(a) for a in argv[3:]]], dtype=torch.long)
        np.savetxt(sys.stdout, model(ids)[0].detach().numpy(), fmt="%.6f")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
