"""Torch side of bench/bench_train.c: the same model trained on the same tokenised texts.

    OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 bench/train_torch.py MODEL DATA P K STEPS

DATA (written by bench_train): "PDTRAIN1", u32 n, then per text: i32 label, u32 length,
i32 ids[length]. Each step draws P labels x K texts (as daemon/train.c does), runs the
forward over packed chunks, batch-hard mining, the triplet loss, backward, gradient
clipping at 1.0 and Adam (tests/reference/train_ref.py, train_step). One thread. Prints
one line "best median" of examples per second over rounds of STEPS steps each, after one
warm-up round.
"""
import os
import struct
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
import encoder_ref as er  # noqa: E402
import st_io  # noqa: E402
import train_ref as trr  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))


def read_data(path):
    blob = open(path, "rb").read()
    assert blob[:8] == b"PDTRAIN1"
    (n,), pos, texts, labels = struct.unpack_from("<I", blob, 8), 12, [], []
    for _ in range(n):
        label, ln = struct.unpack_from("<iI", blob, pos)
        texts.append(list(struct.unpack_from("<%di" % ln, blob, pos + 8)))
        labels.append(label)
        pos += 8 + 4 * ln
    return texts, np.array(labels)


def sampler(labels, P, K, rng):
    groups = {l: np.flatnonzero(labels == l) for l in np.unique(labels)}
    groups = {l: g for l, g in groups.items() if len(g) >= 2}
    keys = np.array(sorted(groups))

    def draw():
        chosen = rng.choice(keys, min(P, len(keys)), replace=False)
        idx = np.concatenate([rng.choice(groups[l], K, replace=len(groups[l]) < K)
                              for l in chosen])
        return idx, np.repeat(chosen, K)
    return draw


def main():
    model_path, data_path, P, K, steps = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    torch.set_num_threads(1)
    tensors, meta = st_io.load(model_path)
    model = er.PromptEncoder(st_io.config(meta))
    model.load_tensors(tensors)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    texts, labels = read_data(data_path)
    draw = sampler(labels, P, K, np.random.default_rng(1))

    rates = []
    for r in range(ROUNDS + 1):
        t0 = time.perf_counter()
        n = 0
        for _ in range(steps):
            idx, lab = draw()
            trr.train_step(model, opt, [texts[i] for i in idx], torch.from_numpy(lab).long(),
                           "hard", 0.0, 1e-3)
            n += len(idx)
        if r:  # the first round warms the allocator and the caches
            rates.append(n / (time.perf_counter() - t0))
    rates.sort()
    print("%.2f %.2f" % (rates[-1], rates[len(rates) // 2]))


if __name__ == "__main__":
    main()
