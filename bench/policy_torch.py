"""Times the promptd policy in PyTorch on the inputs bench/bench_policy.c wrote.

    OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 bench/policy_torch.py INPUT ROUNDS SECONDS

INPUT is a PDREF01 file (tests/reference/policy_ref.py's format) with the arena, one
prompt (state, 8 template embeddings, temperature, floor, uniform number) and a batch of
experience with its PPO and Adam settings. The model and the update are those of
tests/reference/policy_ref.py; only the shuffle is torch.randperm, as a torch user would
write it. Prints `key value` lines: act_us (both towers per call), act_cached_us (template
tower outputs cached), update_ms, and the choice act made for the C side to compare.
Each time is the median over ROUNDS rounds of SECONDS seconds, on one thread.
"""
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "reference"))
import policy_ref as pr  # noqa: E402


def per_call(fn, rounds, seconds):
    fn()
    times = []
    for _ in range(rounds):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= seconds:
                break
        times.append(dt / n)
    return statistics.median(times)


@torch.no_grad()
def act_cached(model, x, u, T, m, uniform):
    """act with the template tower's outputs u [k, Q] computed beforehand."""
    h = torch.tanh(model.fc1(x))
    z = u @ model.fc2(h)
    v = model.value(h)
    k = z.shape[0]
    pi = m + (1 - k * m) * torch.softmax(z / T, 0)
    run = torch.cumsum(pi, 0)
    a = min(int(torch.searchsorted(run, uniform * run[-1], right=True)), k - 1)
    return a, float(pi[a]), math.log(float(pi[a])), float(v)


def main():
    path, rounds, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    torch.set_num_threads(1)
    inp = pr.read_ref(path)
    dims = tuple(int(v) for v in inp["dims"])
    model = pr.Policy(dims)
    model.load_arena(inp["params"])

    # One prompt.
    T, m, uniform = (float(v) for v in inp["act_cfg"])
    x, emb = torch.from_numpy(inp["act_x"]), torch.from_numpy(inp["act_emb"])
    a, p, logp, v = pr.act(model, x, emb, T, m, uniform)
    with torch.no_grad():
        u = model.template(emb)
    act_us = per_call(lambda: pr.act(model, x, emb, T, m, uniform), rounds, seconds) * 1e6
    cached_us = per_call(lambda: act_cached(model, x, u, T, m, uniform), rounds, seconds) * 1e6

    # One update on the batch.
    f = [float(v) for v in inp["ppo_cfg"]]
    cfg = dict(epochs=int(f[0]), minibatch=int(f[1]), clip=f[2], value_coef=f[3],
               entropy_coef=f[4], target_kl=0.0, gamma=f[5], adv_eps=f[7], max_grad_norm=f[8],
               temperature=f[9], min_prob=f[10])
    cfg["lambda"] = f[6]
    acfg = dict(lr=float(inp["adam_cfg"][0]), lr_min=0.0, beta1=0.9, beta2=0.999, eps=1e-8,
                warmup=0, decay_steps=0, decay="constant")
    batch = {k: inp[k] for k in ("x", "emb", "elig", "off", "action", "logp_old", "v_old",
                                 "reward")}
    start = pr.Policy(dims)
    start.load_arena(inp["params"])

    def update():
        model.load_state_dict(start.state_dict())
        pr.ppo_update(model, batch, cfg, acfg, 0, shuffler=lambda n, rng: torch.randperm(n))

    update_ms = per_call(update, rounds, seconds) * 1e3

    print("act_us %.3f" % act_us)
    print("act_cached_us %.3f" % cached_us)
    print("update_ms %.4f" % update_ms)
    print("act_index %d" % a)
    print("act_p %.9g" % p)
    print("act_value %.9g" % v)


if __name__ == "__main__":
    main()
