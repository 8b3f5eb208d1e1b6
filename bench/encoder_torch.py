"""Torch side of bench/bench_encoder.c: the same model file and the same inputs.

    OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 bench/encoder_torch.py MODEL CASES OUT

CASES (written by bench_encoder): "PDBENCH1", u32 cases; per case: u32 name length, name,
u32 prompts B, u32 lengths[B], i32 ids[sum]. For each case, prints one line
"name best median variant" on stdout: sequences per second, the best and the median of
the rounds, for the faster of torch's ways to run the model (
nn.TransformerEncoder's fused path with nested tensors, or the layers one by one), and
writes the output vectors of every case to OUT (f32, case after case) so that the C side
can check it measured the same computation. One thread: torch.set_num_threads(1).
"""
import os
import struct
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
import encoder_ref as er  # noqa: E402
import st_io  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
ROUND_SECONDS = float(os.environ.get("BENCH_ROUND_SECONDS", "0.4"))


def read_cases(path):
    blob = open(path, "rb").read()
    assert blob[:8] == b"PDBENCH1"
    (n,), pos, cases = struct.unpack_from("<I", blob, 8), 12, []
    for _ in range(n):
        (ln,) = struct.unpack_from("<I", blob, pos)
        name = blob[pos + 4:pos + 4 + ln].decode()
        pos += 4 + ln
        (b,) = struct.unpack_from("<I", blob, pos)
        lens = struct.unpack_from("<%dI" % b, blob, pos + 4)
        pos += 4 + 4 * b
        ids = struct.unpack_from("<%di" % sum(lens), blob, pos)
        pos += 4 * sum(lens)
        prompts, k = [], 0
        for n_tok in lens:
            prompts.append(list(ids[k:k + n_tok]))
            k += n_tok
        cases.append((name, prompts))
    return cases


def make_runner(model, prompts, fused):
    """A closure that encodes the prompts (each at most max_len tokens)."""
    b, lmax = len(prompts), max(len(p) for p in prompts)
    tok = torch.zeros(b, lmax, dtype=torch.long)
    pad = torch.ones(b, lmax, dtype=torch.bool)
    for i, p in enumerate(prompts):
        tok[i, :len(p)] = torch.tensor(p)
        pad[i, :len(p)] = False
    enc = nn.TransformerEncoder(model.layers[0], len(model.layers), enable_nested_tensor=True)
    enc.layers = model.layers
    keep = (~pad).unsqueeze(-1).float()
    count = keep.sum(1)
    pos = torch.arange(lmax)

    def run():
        x = model.embedding(tok) + model.pos_embedding(pos)[None]
        if fused:
            x = enc(x, src_key_padding_mask=pad)
            if x.is_nested:
                x = x.to_padded_tensor(0.0, (b, lmax, x.size(-1)))
        else:
            for layer in model.layers:
                x = layer(x, src_key_padding_mask=pad)
        pooled = (x * keep).sum(1) / count
        return F.normalize(model.proj(pooled), dim=-1, eps=1e-12)
    return run


def rate(run, n_seqs):
    """(best, median) sequences per second over the rounds."""
    rates = []
    for _ in range(ROUNDS):
        n, t0 = 0, time.perf_counter()
        while True:
            run()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= ROUND_SECONDS:
                break
        rates.append(n * n_seqs / dt)
    rates.sort()
    return rates[-1], rates[len(rates) // 2]


def main():
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*nested tensors is in prototype.*")
    tensors, meta = st_io.load(sys.argv[1])
    model = er.PromptEncoder(st_io.config(meta)).eval()
    model.load_tensors(tensors)
    with open(sys.argv[3], "wb") as out, torch.inference_mode():
        for name, prompts in read_cases(sys.argv[2]):
            results = []
            for fused in (True, False):
                run = make_runner(model, prompts, fused)
                for _ in range(3):
                    y = run()  # warm up
                best, median = rate(run, len(prompts))
                results.append((best, median, "fused" if fused else "layers"))
            best, median, variant = max(results)
            out.write(y.numpy().astype("<f4").tobytes())
            print("%s %.3f %.3f %s" % (name, best, median, variant), flush=True)


if __name__ == "__main__":
    main()
