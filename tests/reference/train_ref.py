"""PyTorch reference of promptd's encoder training (kernels/encoder_backward.c,
kernels/triplet.c, daemon/train.c) and the parity tensors tests/test_train.c reads.

    /usr/bin/python3 tests/reference/train_ref.py --make-model build/tools/make_model [OUTDIR]

It has tools/make_model write a small perturbed model (the C test draws the same weights
with enc_init_random and checks the model id), loads it into encoder_ref.PromptEncoder,
and runs three training steps on P x K batches of random token ids, some prompts longer
than max_len so that they span several chunks:

  step 1: semi-hard mining, plus the projection head's reconstruction term (weight 0.5)
  step 2: batch-hard mining
  step 3: batch-hard mining

each one: forward (packed chunks, masked mean pooling over every chunk of a prompt,
projection, L2 normalisation), Euclidean distances sqrt(|a - b|^2 + 1e-12), mining on the
detached distances, the mean of max(0, d(a,p) - d(a,n) + 1), backward, the gradient's
global norm clipped at 1.0 (torch.nn.utils.clip_grad_norm_) and torch.optim.Adam at the
learning rate of kernels/adam.c's schedule (warm-up 2 steps, cosine decay over 4).

The key third of in_proj_bias gets a zero gradient, as in the C kernel: it shifts all
scores of a query row by the same amount, so its exact gradient is zero and autograd's
float noise there would become Adam steps of size lr.

train_step.ref (PDREF01, st_io.write_ref) holds the configuration, the batches, each
step's loss, the gradient of step 1 (before clipping, flat, canonical order) and the
weights after step 3. bench/train_torch.py imports the training step from here.
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import encoder_ref as er  # noqa: E402
import st_io  # noqa: E402

EPS = 1e-12  # inside the square root of a distance (kernels/triplet.h, TRIPLET_EPS)


# --- forward over packed chunks ---

def chunk_batch(prompts, max_len, stride):
    """Chunks of every prompt (ENCODER.md), padded: tok (S, Lmax), pad mask, owner (S)."""
    chunks = []
    for b, ids in enumerate(prompts):
        for start, ln in er.chunk_plan(len(ids), max_len, stride):
            chunks.append((b, ids[start:start + ln]))
    lmax = max((len(c) for _, c in chunks), default=1)
    tok = torch.zeros(len(chunks), lmax, dtype=torch.long)
    pad = torch.ones(len(chunks), lmax, dtype=torch.bool)
    for s, (_, c) in enumerate(chunks):
        tok[s, :len(c)] = torch.tensor(c, dtype=torch.long)
        pad[s, :len(c)] = False
    owner = torch.tensor([b for b, _ in chunks], dtype=torch.long)
    return tok, pad, owner


def encode(model, tok, pad, owner, n_prompts):
    """Training forward: pooled (B, C), normalised output (B, P)."""
    x = er.embed(model, tok)
    for layer in model.layers:
        attn = layer.self_attn(x, x, x, key_padding_mask=pad, need_weights=False)[0]
        ln1 = layer.norm1(x + attn)
        x = layer.norm2(ln1 + layer.linear2(layer.activation(layer.linear1(ln1))))
    keep = (~pad).to(x.dtype)
    sums = torch.zeros(n_prompts, x.shape[-1]).index_add(0, owner, (x * keep[..., None]).sum(1))
    counts = torch.zeros(n_prompts).index_add(0, owner, keep.sum(1))
    pooled = sums / counts.clamp(min=1)[:, None]
    out = F.normalize(model.proj(pooled), dim=-1, eps=1e-12)
    return pooled, out


# --- triplet loss and mining (kernels/triplet.c) ---

def distances(y):
    diff = y[:, None, :] - y[None, :, :]
    return torch.sqrt((diff * diff).sum(-1) + EPS)


def mine_hard(dist, labels):
    """One triplet per anchor: farthest positive, nearest negative (first index on ties)."""
    d = dist.detach()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    pos_d = torch.where(same & ~eye, d, torch.full_like(d, -math.inf))
    neg_d = torch.where(~same, d, torch.full_like(d, math.inf))
    ok = torch.isfinite(pos_d.max(1).values) & torch.isfinite(neg_d.min(1).values)
    a = torch.nonzero(ok).squeeze(1)
    return a, pos_d.argmax(1)[a], neg_d.argmin(1)[a]


def mine_semihard(dist, labels):
    """Per (anchor, positive): nearest negative farther than the positive, else the
    farthest negative."""
    d = dist.detach().numpy()
    lab = labels.numpy()
    trip = []
    for a in range(len(lab)):
        negs = [j for j in range(len(lab)) if lab[j] != lab[a]]
        if not negs:
            continue
        for p in range(len(lab)):
            if p == a or lab[p] != lab[a]:
                continue
            outside = [j for j in negs if d[a, j] > d[a, p]]
            if outside:
                n = min(outside, key=lambda j: (d[a, j], j))
            else:
                n = max(negs, key=lambda j: (d[a, j], -j))
            trip.append((a, p, n))
    t = torch.tensor(trip, dtype=torch.long).reshape(-1, 3)
    return t[:, 0], t[:, 1], t[:, 2]


def triplet_loss(dist, a, p, n, margin=1.0):
    if len(a) == 0:
        return dist.sum() * 0
    return torch.clamp(dist[a, p] - dist[a, n] + margin, min=0).mean()


def recon_loss(pooled, w, lam):
    """lam / (B C) sum_b |x_b - w^T w x_b|^2, the pooled vectors detached."""
    x = pooled.detach()
    r = x - (x @ w.t()) @ w
    return lam * (r * r).sum() / (x.shape[0] * x.shape[1])


# --- schedule and step ---

def adam_lr(lr, lr_min, warmup, decay_steps, t):
    """kernels/adam.c adam_lr, cosine decay."""
    if t <= warmup:
        return lr * t / warmup
    p = min(1.0, (t - warmup) / decay_steps)
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * p))


def zero_key_bias_grad(model):
    d = model.cfg["d_model"]
    for layer in model.layers:
        g = layer.self_attn.in_proj_bias.grad
        if g is not None:
            g[d:2 * d] = 0


def train_step(model, opt, prompts, labels, mining, recon, lr, clip=1.0, margin=1.0,
               keep_grads=False):
    """One step; returns the loss (a float) and, with keep_grads, the gradients before
    clipping."""
    cfg = model.cfg
    tok, pad, owner = chunk_batch(prompts, cfg["max_len"], cfg["chunk_stride"])
    pooled, out = encode(model, tok, pad, owner, len(prompts))
    dist = distances(out)
    a, p, n = (mine_semihard if mining == "semihard" else mine_hard)(dist, labels)
    loss = triplet_loss(dist, a, p, n, margin)
    if recon > 0:
        loss = loss + recon_loss(pooled, model.proj.weight, recon)
    opt.zero_grad(set_to_none=False)
    loss.backward()
    zero_key_bias_grad(model)
    grads = [q.grad.detach().clone() for q in model.parameters()] if keep_grads else None
    torch.nn.utils.clip_grad_norm_(list(model.parameters()), clip)
    for g in opt.param_groups:
        g["lr"] = lr
    opt.step()
    return float(loss), grads


# --- the parity case ---

CFG = {"vocab_size": 211, "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64,
       "max_len": 8, "chunk_stride": 6, "proj_dim": 16, "activation": "gelu"}
SEED, P, K = 21, 4, 3
STEPS = [("semihard", 0.5), ("hard", 0.0), ("hard", 0.0)]
LR, LR_MIN, WARMUP, DECAY = 3e-3, 3e-4, 2, 4


def make_model(make_model_bin):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.safetensors")
        c = CFG
        subprocess.run([make_model_bin, "--seed", str(SEED), "--vocab", str(c["vocab_size"]),
                        "--d", str(c["d_model"]), "--layers", str(c["n_layers"]), "--heads",
                        str(c["n_heads"]), "--ff", str(c["d_ff"]), "--max-len",
                        str(c["max_len"]), "--stride", str(c["chunk_stride"]), "--proj",
                        str(c["proj_dim"]), "--act", c["activation"], "--perturb", "-o", path],
                       check=True)
        tensors, meta = st_io.load(path)
    model = er.PromptEncoder(st_io.config(meta))
    model.load_tensors(tensors)
    return model, meta["model_id"]


def batches(rng):
    """P labels x K prompts per step, lengths 1 to 20 (up to 3 chunks of 8, stride 6)."""
    out = []
    for _ in STEPS:
        labels = np.repeat(rng.choice(9, P, replace=False), K).astype(np.int32)
        lens = rng.integers(1, 21, P * K)
        prompts = [rng.integers(1, CFG["vocab_size"], n).tolist() for n in lens]
        out.append((prompts, labels))
    return out


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors]).numpy().astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--make-model", default="build/tools/make_model")
    ap.add_argument("outdir", nargs="?", default=os.path.dirname(os.path.abspath(__file__)))
    a = ap.parse_args()
    torch.set_num_threads(1)

    model, model_id = make_model(a.make_model)
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8)
    rng = np.random.default_rng(7)
    rec = [("config", np.array([CFG["vocab_size"], CFG["d_model"], CFG["n_layers"],
                                CFG["n_heads"], CFG["d_ff"], CFG["max_len"],
                                CFG["chunk_stride"], CFG["proj_dim"], SEED, P, K,
                                len(STEPS), WARMUP, DECAY], dtype=np.int32)),
           ("schedule", np.array([LR, LR_MIN], dtype=np.float32)),
           ("model_id", np.frombuffer(model_id.encode(), dtype=np.uint8))]
    losses = []
    for s, ((prompts, labels), (mining, recon)) in enumerate(zip(batches(rng), STEPS)):
        lr = adam_lr(LR, LR_MIN, WARMUP, DECAY, s + 1)
        loss, grads = train_step(model, opt, prompts, torch.from_numpy(labels).long(), mining,
                                 recon, lr, keep_grads=True)
        losses.append(loss)
        rec += [("ids%d" % s, np.array([i for p in prompts for i in p], dtype=np.int32)),
                ("off%d" % s, np.cumsum([0] + [len(p) for p in prompts]).astype(np.int32)),
                ("labels%d" % s, labels),
                ("step%d" % s, np.array([STEPS[s][0] == "semihard", recon], dtype=np.float32))]
        if s == 0:
            rec.append(("grad0", flat(grads)))
        print("step %d (%s, recon %.1f): loss %.6f lr %.2e" % (s + 1, mining, recon, loss, lr))
    rec.append(("loss", np.array(losses, dtype=np.float32)))
    rec.append(("params", flat([q.detach() for q in model.parameters()])))
    path = os.path.join(a.outdir, "train_step.ref")
    st_io.write_ref(path, rec)
    print("%s: %d bytes" % (path, os.path.getsize(path)))


if __name__ == "__main__":
    main()
