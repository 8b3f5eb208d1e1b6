"""PyTorch reference of the promptd policy and its PPO update (kernels/POLICY.md), and the
parity tensors that tests/test_policy.c compares the C kernels against.

    /usr/bin/python3 tests/reference/policy_ref.py [OUTDIR]      (default tests/reference)

For each case it builds the policy as a torch module whose state_dict keys are the arena's
tensor names, initialises it exactly as policy_init does (a Python copy of kernels/rng.c),
makes a batch of experience (states, a table of template embeddings, eligible sets,
actions drawn from the policy, stale log-probabilities and values, rewards, episodes),
and runs one PPO update in float32 with the same shuffles (the same generator) and the
same Adam arithmetic. It writes policy_<case>.ref (PDREF01, the layout of
tests/reference/st_io.py): the configuration, the batch, the weights before, the
gradient of the first minibatch, the permutations, the advantages, the statistics and
the weights after. The same update in float64 is printed as the noise floor of float32.

bench/policy_torch.py imports Policy, act and ppo_update from here for its timings.
"""
import math
import os
import struct
import sys

import numpy as np
import torch
from torch import nn

M64 = (1 << 64) - 1
NAMES = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
         "template.weight", "template.bias", "value.weight", "value.bias"]
ALIGN = 16  # floats; policy_layout starts every tensor on a 64-byte boundary
DECAY = {"constant": 0, "linear": 1, "cosine": 2}


def f32(v):
    """A Python float holding the float32 value C sees for the same setting."""
    return float(np.float32(v))


# --- kernels/rng.c, bit for bit ---

def _rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M64


class Rng:
    """xoshiro256** seeded through splitmix64, with Lemire's bounded draw."""

    def __init__(self, seed):
        x, self.s = seed & M64, []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & M64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            self.s.append(z ^ (z >> 31))

    def next(self):
        s = self.s
        result = (_rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = _rotl(s[3], 45)
        return result

    def below(self, n):
        m = (self.next() >> 32) * n
        if (m & 0xFFFFFFFF) < n:
            threshold = ((1 << 32) - n) % n
            while (m & 0xFFFFFFFF) < threshold:
                m = (self.next() >> 32) * n
        return m >> 32

    def uniform(self):
        return (self.next() >> 11) * (1.0 / 9007199254740992.0)


def shuffle(n, rng):
    """ppo_shuffle: Fisher-Yates from the end."""
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.below(i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


# --- the arena ---

def layout(dims):
    """[(name, offset, shape)], total floats: policy_layout."""
    D, E, H, Q = dims
    shapes = [(H, D), (H,), (Q, H), (Q,), (Q, E), (Q,), (1, H), (1,)]
    out, off = [], 0
    for name, shape in zip(NAMES, shapes):
        out.append((name, off, shape))
        off += -(-int(np.prod(shape)) // ALIGN) * ALIGN
    return out, off


def init_arena(dims, seed):
    """policy_init: Glorot-uniform weights in layout order, zero biases and gaps."""
    tensors, total = layout(dims)
    arena, rng = np.zeros(total, np.float32), Rng(seed)
    for _, off, shape in tensors:
        if len(shape) != 2:
            continue
        a = math.sqrt(6.0 / (shape[0] + shape[1]))
        n = shape[0] * shape[1]
        arena[off:off + n] = [np.float32((2.0 * rng.uniform() - 1.0) * a) for _ in range(n)]
    return arena


class Policy(nn.Module):
    """State tower fc1 (tanh), fc2; template tower; value head. Keys match the arena."""

    def __init__(self, dims, dtype=torch.float32):
        super().__init__()
        D, E, H, Q = dims
        self.dims = dims
        self.fc1 = nn.Linear(D, H, dtype=dtype)
        self.fc2 = nn.Linear(H, Q, dtype=dtype)
        self.template = nn.Linear(E, Q, dtype=dtype)
        self.value = nn.Linear(H, 1, dtype=dtype)

    def load_arena(self, arena):
        dtype = self.fc1.weight.dtype
        sd = {name: torch.tensor(arena[off:off + int(np.prod(shape))].reshape(shape), dtype=dtype)
              for name, off, shape in layout(self.dims)[0]}
        self.load_state_dict(sd, strict=True)

    def arena_of(self, tensors):
        """A flat float32 arena from a dict name -> tensor (weights or gradients)."""
        spec, total = layout(self.dims)
        arena = np.zeros(total, np.float32)
        for name, off, shape in spec:
            arena[off:off + int(np.prod(shape))] = tensors[name].detach().double().numpy().ravel()
        return arena

    def forward(self, x, emb, pad, mask, k, T, m):
        """x [B,D], emb [NT,E], pad [B,kmax] rows of emb, mask [B,kmax], k [B] set sizes.
        Returns pi, logpi [B,kmax] (0 off the mask) and V [B]."""
        h = torch.tanh(self.fc1(x))
        q = self.fc2(h)
        v = self.value(h).squeeze(1)
        u = self.template(emb)
        z = (q[:, None, :] * u[pad]).sum(-1)
        y = (z / T).masked_fill(~mask, float("-inf"))
        s = torch.softmax(y, 1)
        zero, one = torch.zeros_like(s), torch.ones_like(s)
        if m > 0:
            c = 1 - k * m
            mix = m + c[:, None] * s
            uniform = (c <= 0)[:, None].expand_as(mix)
            pi = torch.where(uniform, (1 / k)[:, None].expand_as(mix), mix)
            pi = torch.where(mask, pi, zero)
            logpi = torch.log(torch.where(mask, pi, one))
        else:
            pi = s
            logpi = torch.where(mask, torch.log_softmax(y, 1), zero)
        return pi, logpi, v


@torch.no_grad()
def act(model, x, emb, T, m, uniform):
    """One prompt: (index, p, log p, V), as policy_act (inverse CDF on uniform)."""
    h = torch.tanh(model.fc1(x))
    q = model.fc2(h)
    v = model.value(h)
    z = model.template(emb) @ q
    k = z.shape[0]
    pi = torch.softmax(z / T, 0)
    if k * m >= 1:
        pi = torch.full_like(pi, 1.0 / k)
    elif m > 0:
        pi = m + (1 - k * m) * pi
    run = torch.cumsum(pi, 0)
    a = min(int(torch.searchsorted(run, uniform * run[-1], right=True)), k - 1)
    return a, float(pi[a]), math.log(float(pi[a])), float(v)


# --- PPO ---

def advantages(reward, v_old, episode, done, gamma, lam):
    """ppo_advantages in float32, the same operations in the same order."""
    if episode is None:  # one-step: delta = r + gamma * 0 - V, exactly r - V
        adv = reward - v_old
        return adv, adv + v_old
    N = len(reward)
    adv, carry = np.zeros(N, np.float32), np.float32(0)
    g, gl = np.float32(gamma), np.float32(gamma) * np.float32(lam)
    for n in range(N - 1, -1, -1):
        more = (episode is not None and n + 1 < N and episode[n + 1] == episode[n]
                and not (done is not None and done[n]))
        next_v = v_old[n + 1] if more else np.float32(0)
        delta = reward[n] + g * next_v - v_old[n]
        adv[n] = delta + (gl * carry if more else np.float32(0))
        carry = adv[n]
    return adv, adv + v_old


def normalize(adv, eps):
    a = adv.astype(np.float64)
    mu = a.mean()
    sd = math.sqrt(((a - mu) ** 2).mean())
    return ((a - mu) / (sd + f32(eps))).astype(np.float32), mu, sd


def adam_lr(acfg, t):
    if t <= acfg["warmup"]:
        return acfg["lr"] * t / acfg["warmup"]
    if acfg["decay"] == "constant" or acfg["decay_steps"] <= 0:
        return acfg["lr"]
    p = min(1.0, (t - acfg["warmup"]) / acfg["decay_steps"])
    span = acfg["lr"] - acfg["lr_min"]
    if acfg["decay"] == "linear":
        return acfg["lr"] - span * p
    return acfg["lr_min"] + span * 0.5 * (1.0 + math.cos(math.pi * p))


def pad_sets(batch, idx):
    off, elig = batch["off"], batch["elig"]
    k = np.array([off[n + 1] - off[n] for n in idx])
    pad = np.zeros((len(idx), k.max()), np.int64)
    mask = np.zeros((len(idx), k.max()), bool)
    for r, n in enumerate(idx):
        pad[r, :k[r]] = elig[off[n]:off[n + 1]]
        mask[r, :k[r]] = True
    return torch.from_numpy(pad), torch.from_numpy(mask), k


def minibatch_loss(model, t, adv, ret, idx, cfg):
    """The mean PPO objective of the samples idx and its statistics (as ppo_minibatch_grad)."""
    ix = torch.as_tensor(idx)
    pad, mask, k = t["sets"](ix)
    pi, logpi, v = model(t["x"][ix], t["emb"], pad, mask, k, cfg["temperature"],
                         cfg["min_prob"])
    logp = logpi.gather(1, t["action"][ix][:, None]).squeeze(1)
    log_ratio = logp - t["logp_old"][ix]
    ratio = torch.exp(log_ratio)
    A, R, eps = adv[ix], ret[ix], cfg["clip"]
    pl = -torch.min(ratio * A, torch.clamp(ratio, 1 - eps, 1 + eps) * A)
    vl = (v - R) ** 2
    ent = -(pi * logpi).sum(1)
    loss = pl.mean() + cfg["value_coef"] * vl.mean() - cfg["entropy_coef"] * ent.mean()
    with torch.no_grad():
        st = np.array(torch.stack([loss, pl.mean(), vl.mean(), ent.mean(),
                                   ((ratio - 1) - log_ratio).mean(),
                                   ((ratio - 1).abs() > eps).to(loss.dtype).mean()]).tolist())
    return loss, st


def batch_tensors(batch, dtype):
    """The batch as tensors; eligible sets padded once, so a minibatch is an index."""
    t = {name: torch.tensor(batch[name], dtype=dtype) for name in ("x", "emb", "logp_old")}
    t["action"] = torch.from_numpy(batch["action"].astype(np.int64))
    pad, mask, k = pad_sets(batch, list(range(len(batch["action"]))))
    k = torch.tensor(k, dtype=dtype)
    t["sets"] = lambda idx: (pad[idx], mask[idx], k[idx])
    return t


def ppo_update(model, batch, cfg, acfg, seed, step0=0, m0=None, v0=None, record=None,
               shuffler=shuffle):
    """ppo_update: advantages, E epochs of shuffled minibatches, Adam with clipping.
    shuffler(n, rng) gives each epoch's order (the benchmark passes torch.randperm)."""
    dtype = model.fc1.weight.dtype
    t = batch_tensors(batch, dtype)
    raw, ret = advantages(batch["reward"], batch["v_old"], batch.get("episode"),
                          batch.get("done"), cfg["gamma"], cfg["lambda"])
    adv, mu, sd = normalize(raw, cfg["adv_eps"])
    adv_t, ret_t = torch.tensor(adv, dtype=dtype), torch.tensor(ret, dtype=dtype)

    named = dict(model.named_parameters())
    params = [named[n] for n in NAMES]
    opt = torch.optim.Adam(params, lr=acfg["lr"], betas=(acfg["beta1"], acfg["beta2"]),
                           eps=acfg["eps"])
    if step0:
        for n, p in zip(NAMES, params):
            opt.state[p] = {"step": torch.tensor(float(step0)),
                            "exp_avg": torch.tensor(m0[n], dtype=dtype),
                            "exp_avg_sq": torch.tensor(v0[n], dtype=dtype)}

    rng, N, M = Rng(seed), len(batch["reward"]), min(cfg["minibatch"], len(batch["reward"]))
    step, perms, epoch_stats, norms, lr = step0, [], [], [], 0.0
    for e in range(cfg["epochs"]):
        perm = shuffler(N, rng)
        perms.append(perm)
        sums = np.zeros(6)
        for at in range(0, N, M):
            idx = perm[at:at + M]
            opt.zero_grad()
            loss, st = minibatch_loss(model, t, adv_t, ret_t, idx, cfg)
            loss.backward()
            model.template.bias.grad.zero_()  # its exact gradient is 0 (POLICY.md)
            if record is not None and "grad0" not in record:
                record["grad0"] = {n: p.grad.clone() for n, p in zip(NAMES, params)}
            norm = torch.nn.utils.clip_grad_norm_(params, cfg["max_grad_norm"])
            norms.append(float(norm))
            step += 1
            lr = adam_lr(acfg, step)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.step()
            sums += st * len(idx) / N
        epoch_stats.append(sums)
        if cfg["target_kl"] > 0 and sums[4] > cfg["target_kl"]:
            break
    if record is not None:
        record.update(perms=perms, epoch_stats=epoch_stats, adv=adv, ret=ret, step=step)
        record["stats"] = np.concatenate([[len(epoch_stats), step - step0,
                                           len(epoch_stats) < cfg["epochs"]], epoch_stats[-1],
                                          [np.mean(norms), lr, mu, sd]])
    return step


# --- the cases ---

def make_batch(model, dims, N, NT, kmax, cfg, gen, episodes, stale):
    """Experience as promptd would journal it: actions drawn from the policy, log-probs
    and values a little stale (so some ratios start outside the clip range)."""
    D, E, H, Q = dims
    x = (gen.standard_normal((N, D)) * 0.6).astype(np.float32)
    x[:, D - 3:] = 0  # unused scalar slots: their weights must get exactly zero gradient
    emb = gen.standard_normal((NT, E))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    k = gen.integers(1, kmax + 1, N)
    off = np.concatenate([[0], np.cumsum(k)]).astype(np.int32)
    elig = np.concatenate([gen.choice(NT, kk, replace=False) for kk in k]).astype(np.int32)
    batch = {"x": x, "emb": emb, "elig": elig, "off": off}
    pad, mask, kk = pad_sets(batch, list(range(N)))
    with torch.no_grad():
        pi, logpi, v = model(torch.from_numpy(x), torch.from_numpy(emb), pad, mask,
                             torch.tensor(kk, dtype=torch.float32), cfg["temperature"],
                             cfg["min_prob"])
    pi, logpi = pi.double().numpy(), logpi.numpy()
    action = np.array([gen.choice(k[n], p=pi[n, :k[n]] / pi[n, :k[n]].sum()) for n in range(N)])
    batch["action"] = action.astype(np.int32)
    batch["logp_old"] = (logpi[np.arange(N), action] + gen.normal(0, stale, N)).astype(np.float32)
    batch["v_old"] = (v.numpy() + gen.normal(0, 0.3, N)).astype(np.float32)
    good = elig[off[:-1] + action] % 3 == 0
    batch["reward"] = (good + gen.normal(0, 0.3, N)).astype(np.float32)
    if episodes:
        lengths, left = [], N
        while left:
            lengths.append(min(left, int(gen.integers(1, 7))))
            left -= lengths[-1]
        batch["episode"] = np.repeat(np.arange(len(lengths)) * 7 + 3, lengths).astype(np.int32)
        ends = np.cumsum(lengths) - 1
        done = np.zeros(N, np.uint8)
        done[ends[gen.random(len(ends)) < 0.7]] = 1
        batch["done"] = done
    return batch


def base_cfg(**kw):
    cfg = dict(epochs=4, minibatch=64, clip=0.2, value_coef=0.5, entropy_coef=0.01,
               target_kl=0.0, gamma=0.99, lam=0.95, adv_eps=1e-8, max_grad_norm=1.0,
               temperature=0.7, min_prob=0.0)
    cfg.update(kw)
    cfg["lambda"] = cfg.pop("lam")
    return {k: (v if isinstance(v, int) else f32(v)) for k, v in cfg.items()}


def adam_cfg(**kw):
    a = dict(lr=3e-3, lr_min=0.0, beta1=0.9, beta2=0.999, eps=1e-8, warmup=0, decay_steps=0,
             decay="constant")
    a.update(kw)
    return {k: (f32(v) if isinstance(v, float) else v) for k, v in a.items()}


def read_ref(path):
    """A PDREF01 file as a dict name -> ndarray."""
    dt = {0: "<f4", 1: "<i4", 2: "u1"}
    with open(path, "rb") as f:
        blob = f.read()
    assert blob[:8] == b"PDREF01\n", path
    (n,), pos, out = struct.unpack_from("<I", blob, 8), 12, {}
    for _ in range(n):
        (ln,) = struct.unpack_from("<H", blob, pos)
        name = blob[pos + 2:pos + 2 + ln].decode()
        code, nd = struct.unpack_from("<BB", blob, pos + 2 + ln)
        shape = struct.unpack_from("<%dI" % nd, blob, pos + 4 + ln)
        pos += 4 + ln + 4 * nd
        a = np.frombuffer(blob, dtype=dt[code], count=int(np.prod(shape)), offset=pos)
        out[name] = a.reshape(shape).copy()
        pos += a.nbytes
    return out


def write_ref(path, records):
    """PDREF01: magic, u32 count, then per record u16 name length, name, u8 dtype
    (0 f32, 1 i32, 2 u8), u8 ndim, u32 shape[ndim], the data little-endian."""
    codes = {np.dtype("float32"): 0, np.dtype("int32"): 1, np.dtype("uint8"): 2}
    with open(path, "wb") as f:
        f.write(b"PDREF01\n" + struct.pack("<I", len(records)))
        for name, a in records:
            a = np.ascontiguousarray(a)
            nb = name.encode()
            f.write(struct.pack("<H", len(nb)) + nb + struct.pack("<BB", codes[a.dtype], a.ndim))
            f.write(struct.pack("<%dI" % a.ndim, *a.shape))
            f.write(a.astype(a.dtype.newbyteorder("<")).tobytes())


def run_case(name, dims, N, NT, kmax, cfg, acfg, init_seed, shuffle_seed, episodes, data_seed,
             step0=0, kl_stop_after=0, stale=0.15):
    gen = np.random.default_rng(data_seed)
    before = init_arena(dims, init_seed)
    model = Policy(dims)
    model.load_arena(before)
    batch = make_batch(model, dims, N, NT, kmax, cfg, gen, episodes, stale)
    spec, total = layout(dims)
    m0 = v0 = None
    if step0:
        m0 = {n: (gen.standard_normal(s) * 1e-3).astype(np.float32) for n, _, s in spec}
        v0 = {n: (gen.random(s) * 1e-5).astype(np.float32) for n, _, s in spec}
        m0["template.bias"][:] = 0
        v0["template.bias"][:] = 0

    # Early stopping after a chosen epoch: place target_kl between two epochs' KLs, far
    # from both, from a trial run without it.
    if kl_stop_after:
        trial, rec = Policy(dims), {}
        trial.load_arena(before)
        ppo_update(trial, batch, cfg, acfg, shuffle_seed, step0, m0, v0, rec)
        kls = [s[4] for s in rec["epoch_stats"]]
        lo, hi = kls[kl_stop_after - 2], kls[kl_stop_after - 1]
        assert hi > 1.5 * lo, "KL does not grow enough between epochs: %r" % kls
        cfg = dict(cfg, target_kl=f32(math.sqrt(lo * hi)))

    rec = {}
    ppo_update(model, batch, cfg, acfg, shuffle_seed, step0, m0, v0, rec)
    after = model.arena_of(dict(model.named_parameters()))

    # The same update in float64: how far float32 itself wanders.
    m64 = Policy(dims, torch.float64)
    m64.load_arena(before)
    ppo_update(m64, batch, cfg, acfg, shuffle_seed, step0, m0, v0)
    floor = np.abs(m64.arena_of(dict(m64.named_parameters())) - after).max()
    print("%s: %d epochs, %d steps, KL per epoch %s, max |w32 - w64| %.2e, max |dw| %.2e"
          % (name, len(rec["perms"]), rec["step"] - step0,
             ["%.4f" % s[4] for s in rec["epoch_stats"]], floor, np.abs(after - before).max()))

    ints = [cfg["epochs"], cfg["minibatch"], shuffle_seed, step0,
            acfg["warmup"], acfg["decay_steps"], DECAY[acfg["decay"]], int(episodes), init_seed]
    floats = [cfg[k] for k in ("clip", "value_coef", "entropy_coef", "target_kl", "gamma",
                               "lambda", "adv_eps", "max_grad_norm", "temperature", "min_prob")]
    floats += [acfg[k] for k in ("lr", "lr_min", "beta1", "beta2", "eps")]
    records = [("dims", np.array(dims, np.int32)), ("cfg_int", np.array(ints, np.int32)),
               ("cfg_float", np.array(floats, np.float32))]
    for key in ("x", "emb", "elig", "off", "action", "logp_old", "v_old", "reward"):
        records.append((key, batch[key]))
    if episodes:
        records += [("episode", batch["episode"]), ("done", batch["done"])]
    grad0 = model.arena_of(rec["grad0"])
    for tag, arena in (("before", before), ("grad0", grad0), ("after", after)):
        records += [("%s/%s" % (tag, n), arena[o:o + int(np.prod(s))].reshape(s))
                    for n, o, s in spec]
    if step0:
        records += [("m0/" + n, m0[n]) for n, _, _ in spec]
        records += [("v0/" + n, v0[n]) for n, _, _ in spec]
    records += [("perm", np.array(rec["perms"], np.int32)), ("adv", rec["adv"]),
                ("ret", rec["ret"].astype(np.float32)),
                ("stats", rec["stats"].astype(np.float32))]
    return records


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    torch.manual_seed(0)
    torch.set_num_threads(1)

    # The benchmark's shape: one-step episodes, D = 64 + 16, 12 templates in the table.
    cfg = base_cfg(min_prob=0.02)
    acfg = adam_cfg(lr=3e-3, lr_min=3e-4, warmup=4, decay_steps=40, decay="cosine")
    recs = run_case("onestep", (80, 64, 64, 32), 256, 12, 8, cfg, acfg, 1234, 99, False, 7)
    write_ref(os.path.join(outdir, "policy_onestep.ref"), recs)

    # Odd sizes (tails of every SIMD loop), GAE over episodes, a floor that makes large
    # sets uniform (k m >= 1), a smaller last minibatch, Adam resumed at step 10, and an
    # early stop after the second epoch.
    cfg = base_cfg(min_prob=0.1, temperature=0.5, gamma=0.9, lam=0.8)
    acfg = adam_cfg(lr=1e-2, lr_min=2e-3, decay_steps=30, decay="linear")
    recs = run_case("gae", (27, 13, 20, 10), 200, 14, 12, cfg, acfg, 4321, 5, True, 11,
                    step0=10, kl_stop_after=2, stale=0.03)
    write_ref(os.path.join(outdir, "policy_gae.ref"), recs)


if __name__ == "__main__":
    main()
