#!/usr/bin/python3
"""bench_lstm_torch.py - the PyTorch side of scripts/bench-lstm: a 2-layer LSTM language
model (nn.Embedding, nn.LSTM, nn.Linear, CrossEntropyLoss, Adam), full BPTT, random tokens,
timed over --steps after --warmup. Prints "torch tokens/s X threads N ...".
Threads come from --threads (torch.set_num_threads); run it with OMP_WAIT_POLICY=PASSIVE."""
import argparse
import time

import torch
import torch.nn as nn


def main():
    ap = argparse.ArgumentParser()
    for k, v in [("threads", 1), ("steps", 10), ("warmup", 2), ("vocab", 8192), ("dim", 256),
                 ("hidden", 256), ("layers", 2), ("seq", 64), ("batch", 32)]:
        ap.add_argument("--" + k, type=int, default=v)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(a.vocab, a.dim)
            self.rnn = nn.LSTM(a.dim, a.hidden, num_layers=a.layers, batch_first=True)
            self.out = nn.Linear(a.hidden, a.vocab)

        def forward(self, x):
            h, _ = self.rnn(self.emb(x))
            return self.out(h)

    model = LM()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lossf = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(7)
    t0 = None
    for s in range(a.warmup + a.steps):
        if s == a.warmup:
            t0 = time.perf_counter()
            c0 = time.process_time()
        tok = torch.randint(4, a.vocab, (a.batch, a.seq + 1), generator=g)
        x, y = tok[:, :-1], tok[:, 1:]
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = lossf(logits.reshape(-1, a.vocab), y.reshape(-1))
        loss.backward()
        opt.step()
    dt = time.perf_counter() - t0
    dc = time.process_time() - c0
    print("torch tokens/s %.0f threads %d steps %d sec/step %.4f cpu/step %.4f loss %.4f" %
          (a.steps * a.batch * a.seq / dt, a.threads, a.steps, dt / a.steps, dc / a.steps,
           loss.item()))


if __name__ == "__main__":
    main()
