#!/usr/bin/python3
"""torch_seq2seq.py - PyTorch reference for lockstep's `--model seq2seq` (LSTM, bidirectional
encoder, Bahdanau attention), used by scripts/compare-seq2seq for issue 6's comparison.

Mirrors models/s2s.c:
  source ids -> Embedding(V, dim) ~ N(0,1) -> dropout -> bidirectional LSTM (hidden per
  direction, 1 layer, packed by length) -> h_j (2H), final [h_fwd(len-1); h_bwd(0)]
  s_0 = tanh(W_b final + b_b), c_0 = 0
  per target step (teacher forcing, input <s>, y_0 .. y_{U-2}):
    e_tj = v . tanh(W_s s_{t-1} + b_s + W_h h_j)   (A = H; W_h without bias, v without bias)
    a_t = softmax over the real source positions, c_t = sum_j a_tj h_j
    s_t, m_t = LSTMCell([dropout(emb(y_{t-1})); c_t], (s_{t-1}, m_{t-1}))
    logits_t = W_o dropout([s_t; c_t]) + b_o
  loss: cross-entropy averaged over the non-<pad> target tokens of the whole batch.
Initialisation as lockstep (and PyTorch's defaults): embeddings N(0,1), every weight and bias
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), v U(-1/sqrt(A), 1/sqrt(A)). Adam (0.9, 0.999, 1e-8),
constant lr, no clipping unless --clip.

Data as lockstep's trainer: vocabularies from the training file only (each side separately;
words with count >= min-count, ordered by count descending then bytes ascending, at most
vocab-size entries including <pad>=0 <unk>=1 <s>=2 </s>=3); the source is truncated to
max-len tokens (no </s>); the target is its tokens followed by </s>, cut to max-len ids with
</s> kept last. Batches: a fresh random permutation of the training set per epoch, cut into
consecutive batches of batch-size (lockstep does the same with its own RNG, so the example
order differs). Greedy decoding of --test-src, at most --max-out tokens, stopping at </s>.

Does not: beam search, GRU, attention = none, multiple layers (not needed for the reference).
"""
import argparse
import math
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def toks(s):
    return [t for t in s.split(" ") if t]


def read_parallel(path):
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if "\t" not in line:
                continue
            src, tgt = line.split("\t", 1)
            s, t = toks(src), toks(tgt)
            if not s and not t:
                continue
            pairs.append((s, t))
    return pairs


def build_vocab(sents, min_count, size):
    count = {}
    for s in sents:
        for w in s:
            count[w] = count.get(w, 0) + 1
    words = sorted(count, key=lambda w: (-count[w], w.encode("utf-8")))
    itos = list(SPECIALS)
    for w in words:
        if count[w] >= min_count and len(itos) < size:
            itos.append(w)
    return itos, {w: i for i, w in enumerate(itos)}


def enc_src(s, stoi, max_len):
    ids = [stoi.get(w, UNK) for w in s]
    return ids[:max_len] if max_len > 0 else ids


def enc_tgt(t, stoi, max_len):
    ids = [stoi.get(w, UNK) for w in t] + [EOS]
    if max_len > 0 and len(ids) > max_len:
        ids = ids[:max_len - 1] + [EOS]
    return ids


def uniform_(p, k):
    with torch.no_grad():
        p.uniform_(-k, k)


class Seq2Seq(nn.Module):
    def __init__(self, vs, vt, dim, hidden, dropout):
        super().__init__()
        H, Ho = hidden, 2 * hidden
        self.H, self.p = H, dropout
        self.src_emb = nn.Embedding(vs, dim, padding_idx=PAD)  # N(0,1), pad row zero
        self.tgt_emb = nn.Embedding(vt, dim, padding_idx=PAD)
        self.encoder = nn.LSTM(dim, H, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(Ho, H)
        self.w_key = nn.Linear(Ho, H, bias=False)
        self.w_query = nn.Linear(H, H)
        self.v = nn.Parameter(torch.empty(H))
        self.decoder = nn.LSTMCell(dim + Ho, H)
        self.out = nn.Linear(H + Ho, vt)
        # lockstep draws biases and weights from U(+-1/sqrt(fan_in)) for every linear map
        for lin, fan in ((self.bridge, Ho), (self.w_key, Ho), (self.w_query, H),
                         (self.out, H + Ho)):
            uniform_(lin.weight, 1 / math.sqrt(fan))
            if lin.bias is not None:
                uniform_(lin.bias, 1 / math.sqrt(fan))
        uniform_(self.v, 1 / math.sqrt(H))
        # nn.LSTM / nn.LSTMCell defaults are already U(+-1/sqrt(H)) on all weights and biases

    def encode(self, x, xl):
        """x (B,T) ids, xl (B) lengths >= 1 -> h (B,T,2H), keys (B,T,A), mask (B,T), s0, c0"""
        e = F.dropout(self.src_emb(x), self.p, self.training)
        packed = nn.utils.rnn.pack_padded_sequence(e, xl.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, (hn, _) = self.encoder(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        final = torch.cat([hn[0], hn[1]], dim=1)  # forward at len-1, backward at 0
        s0 = torch.tanh(self.bridge(final))
        mask = torch.arange(x.size(1))[None, :] < xl[:, None]
        return h, self.w_key(h), mask, s0, torch.zeros_like(s0)

    def step(self, y_prev_emb, s, c, h, keys, mask):
        q = self.w_query(s)  # (B,A)
        e = torch.tanh(q[:, None, :] + keys) @ self.v  # (B,T)
        e = e.masked_fill(~mask, float("-inf"))
        a = torch.softmax(e, dim=1)
        ctx = torch.bmm(a[:, None, :], h)[:, 0]  # (B,2H)
        s, c = self.decoder(torch.cat([y_prev_emb, ctx], dim=1), (s, c))
        return s, c, torch.cat([s, ctx], dim=1)

    def forward(self, x, xl, yin):
        h, keys, mask, s, c = self.encode(x, xl)
        emb = F.dropout(self.tgt_emb(yin), self.p, self.training)
        outs = []
        for u in range(yin.size(1)):
            s, c, o = self.step(emb[:, u], s, c, h, keys, mask)
            outs.append(o)
        O = F.dropout(torch.stack(outs, dim=1), self.p, self.training)
        return self.out(O)

    @torch.no_grad()
    def greedy(self, x, xl, max_out):
        h, keys, mask, s, c = self.encode(x, xl)
        B = x.size(0)
        y = torch.full((B,), BOS, dtype=torch.long)
        done = torch.zeros(B, dtype=torch.bool)
        res = [[] for _ in range(B)]
        for _ in range(max_out):
            s, c, o = self.step(self.tgt_emb(y), s, c, h, keys, mask)
            y = self.out(o).argmax(dim=1)
            for i in range(B):
                if not done[i]:
                    if y[i].item() == EOS:
                        done[i] = True
                    else:
                        res[i].append(y[i].item())
            if bool(done.all()):
                break
        return res


def pad_batch(seqs):
    L = max(1, max(len(s) for s in seqs))
    out = torch.full((len(seqs), L), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out, torch.tensor([len(s) for s in seqs], dtype=torch.long)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", required=True)
    ap.add_argument("--test-src", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--min-count", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=40)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--clip", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-out", type=int, default=60)
    ap.add_argument("--log-every", type=int, default=50)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    np.random.seed(a.seed)

    pairs = read_parallel(a.train)
    src_itos, src_stoi = build_vocab([p[0] for p in pairs], a.min_count, a.vocab_size)
    tgt_itos, tgt_stoi = build_vocab([p[1] for p in pairs], a.min_count, a.vocab_size)
    data = [(enc_src(s, src_stoi, a.max_len), enc_tgt(t, tgt_stoi, a.max_len))
            for s, t in pairs]
    data = [d for d in data if len(d[0]) > 0]  # an empty source has no final state
    print(f"torch: {len(data)} pairs, vocab src {len(src_itos)} tgt {len(tgt_itos)}",
          flush=True)

    model = Seq2Seq(len(src_itos), len(tgt_itos), a.dim, a.hidden, a.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8)
    rng = np.random.default_rng(a.seed)
    perm, pos = rng.permutation(len(data)), 0
    model.train()
    t0 = time.time()
    for step in range(1, a.steps + 1):
        if pos + a.batch_size > len(perm):
            perm, pos = rng.permutation(len(data)), 0
        batch = [data[i] for i in perm[pos:pos + a.batch_size]]
        pos += a.batch_size
        x, xl = pad_batch([b[0] for b in batch])
        y, _ = pad_batch([b[1] for b in batch])
        yin = torch.cat([torch.full((y.size(0), 1), BOS, dtype=torch.long), y[:, :-1]], dim=1)
        yin = yin.masked_fill(y == PAD, PAD)
        logits = model(x, xl, yin)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                               ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        if a.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        if step % a.log_every == 0 or step == a.steps:
            print(f"torch: step {step} loss {loss.item():.4f} {time.time() - t0:.1f} s",
                  flush=True)
    train_s = time.time() - t0

    model.eval()
    with open(a.test_src, encoding="utf-8") as f:
        srcs = [enc_src(toks(l.rstrip("\n")), src_stoi, a.max_len) for l in f]
    hyps = []
    for i in range(0, len(srcs), 64):
        chunk = srcs[i:i + 64]
        idx = [k for k, s in enumerate(chunk) if s]
        out = [[] for _ in chunk]
        if idx:
            x, xl = pad_batch([chunk[k] for k in idx])
            for k, r in zip(idx, model.greedy(x, xl, a.max_out)):
                out[k] = r
        hyps += out
    with open(a.output, "w", encoding="utf-8") as f:
        for h in hyps:
            # as lockstep's writer: specials other than <unk> are not printed
            f.write(" ".join(tgt_itos[t] for t in h if t >= len(SPECIALS) or t == UNK) + "\n")
    print(f"torch: train_seconds {train_s:.1f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
