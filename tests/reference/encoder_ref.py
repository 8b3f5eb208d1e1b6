"""PyTorch reference of the promptd encoder (kernels/ENCODER.md) and its parity tensors.

    /usr/bin/python3 tests/reference/encoder_ref.py --make-model build/tools/make_model [OUTDIR]

For each test configuration it has tools/make_model write a seeded model, loads it into
the PyTorch modules below, tokenises mixed English and Chinese alarm texts with
tokenize_ref.py, and writes every activation the C kernel traces to enc_<name>.ref:
the embedding, each layer's self-attention output, norm1, feed-forward and norm2
outputs (for every 8th packed token and the last token of each chunk, to keep the
files small), and the pooled, projected and normalised vectors of every prompt.
It also exports a tiny model initialised by PyTorch itself, through st_io.save
(tiny_torch.safetensors), to show that a PyTorch model reaches the C loader.

The intermediates come from the modules' own slow path, layer by layer (MHA with
grad enabled, so PyTorch 1.13's fused inference path does not hide them); the script
checks that the fused path (nn.TransformerEncoder under no_grad, nested tensors)
gives the same outputs and prints the difference.
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402
import tokenize_ref as tr  # noqa: E402

ROW_STEP = 8


class PromptEncoder(nn.Module):
    """Token + learned position embedding, post-norm encoder layers, projection.
    Attribute names give the safetensors tensor names (embedding.weight, layers.0...)."""

    def __init__(self, cfg):
        super().__init__()
        d = cfg["d_model"]
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg["vocab_size"], d)
        self.pos_embedding = nn.Embedding(cfg["max_len"], d)
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(d, cfg["n_heads"], cfg["d_ff"], dropout=0.0,
                                       activation=cfg["activation"],
                                       layer_norm_eps=cfg.get("layer_norm_eps", 1e-5),
                                       batch_first=True, norm_first=False)
            for _ in range(cfg["n_layers"])])
        self.proj = nn.Linear(d, cfg["proj_dim"])

    def load_tensors(self, tensors):
        sd = {k: torch.from_numpy(v) for k, v in tensors.items()}
        self.load_state_dict(sd, strict=True)


def chunk_plan(n, max_len, stride):
    """(start, length) of each chunk of a prompt of n tokens (ENCODER.md, 'Chunking')."""
    if n == 0:
        return []
    if n <= max_len:
        return [(0, n)]
    count = 1 + (n - max_len + stride - 1) // stride
    return [(k * stride, min(max_len, n - k * stride)) for k in range(count)]


def pack_chunks(prompts, cfg):
    chunks = []
    for b, ids in enumerate(prompts):
        for start, ln in chunk_plan(len(ids), cfg["max_len"], cfg["chunk_stride"]):
            chunks.append((b, ids[start:start + ln]))
    lmax = max((len(c) for _, c in chunks), default=1)
    tok = torch.zeros(len(chunks), lmax, dtype=torch.long)
    pad = torch.ones(len(chunks), lmax, dtype=torch.bool)
    for s, (_, c) in enumerate(chunks):
        tok[s, :len(c)] = torch.tensor(c, dtype=torch.long)
        pad[s, :len(c)] = False
    return chunks, tok, pad


def embed(model, tok):
    pos = torch.arange(tok.shape[1])
    return model.embedding(tok) + model.pos_embedding(pos)[None]


def pool_project(model, x, chunks, n_prompts):
    """Pooled vector of a prompt: sum of its chunks' token outputs over their count."""
    d = model.cfg["d_model"]
    sums = torch.zeros(n_prompts, d)
    counts = torch.zeros(n_prompts)
    for s, (b, c) in enumerate(chunks):
        sums[b] += x[s, :len(c)].sum(0)
        counts[b] += len(c)
    pooled = sums / counts.clamp(min=1)[:, None]
    projected = model.proj(pooled)
    return pooled, projected, F.normalize(projected, dim=-1, eps=1e-12)


def reference(model, prompts):
    """All activations, layer by layer on the slow path; packed to (T, C)."""
    chunks, tok, pad = pack_chunks(prompts, model.cfg)

    def packed(a):
        return torch.cat([a[s, :len(c)] for s, (_, c) in enumerate(chunks)])

    acts = {}
    x = embed(model, tok)
    acts["emb"] = packed(x)
    for l, layer in enumerate(model.layers):
        attn = layer.self_attn(x, x, x, key_padding_mask=pad, need_weights=False)[0]
        ln1 = layer.norm1(x + attn)
        ff = layer.linear2(layer.activation(layer.linear1(ln1)))
        x = layer.norm2(ln1 + ff)
        for name, a in (("attn", attn), ("ln1", ln1), ("ff", ff), ("ln2", x)):
            acts["layers.%d.%s" % (l, name)] = packed(a)
    acts["pooled"], acts["projected"], acts["out"] = pool_project(model, x, chunks, len(prompts))

    # The fused inference path must agree with the slow path it stands for.
    with torch.no_grad():
        enc = nn.TransformerEncoder(model.layers[0], len(model.layers), enable_nested_tensor=True)
        enc.layers = model.layers
        y = enc(embed(model, tok), src_key_padding_mask=pad)
        if y.is_nested:
            y = y.to_padded_tensor(0.0)
        _, _, fused = pool_project(model, y, chunks, len(prompts))
    diff = (fused - acts["out"]).abs().max().item()
    assert diff < 1e-5, "fused path differs from the slow path by %g" % diff
    acts = {k: v.detach() for k, v in acts.items()}
    return chunks, acts, diff


def sample_rows(chunks):
    rows, t = [], 0
    for _, c in chunks:
        for i in range(len(c)):
            if (t + i) % ROW_STEP == 0 or i == len(c) - 1:
                rows.append(t + i)
        t += len(c)
    return rows


# --- prompts ---

EN = ("wtg-<num> gearbox bearing temp <num> oil pressure low generator speed exceeds limit "
      "pitch motor overcurrent yaw misalignment grid frequency voltage crac-<num> return air "
      "setpoint ups-<num> on battery load runtime rack inlet humidity chiller supply water "
      "core switch <ip> interface down bgp peer state changed ping packet loss failed login "
      "from route withdrawn <ts> error job <uuid> trace <hex> disk full backup finished "
      "overheating critical warning cleared").split()
ZH = ("风机<num>号 齿轮箱温度过高:<num> 发电机转速 异常 告警:交换机 端口 链路中断 任务 执行失败 "
      "机房a区温度 湿度 电池电压低于 请检查 变电站<num>号主变跳闸 压力传感器pt-<num>读数异常 "
      "叶片结冰 冷却水泵 振动过大 服务器宕机 磁盘空间不足").split()


def make_text(r, target, tok_cfg):
    """A text of exactly target tokens: words joined by spaces (so their counts add
    up), then one-token words to fill."""
    parts, n = [], 0
    for _ in range(400):
        w = r.choice(EN if r.random() < 0.5 else ZH)
        k = len(tr.tokenize(w.encode(), tok_cfg))
        if n + k <= target:
            parts.append(w)
            n += k
        if target - n <= 2:
            break
    parts += [r.choice(["a", "x", "<num>", "号"]) for _ in range(target - n)]
    text = " ".join(parts)
    assert len(tr.tokenize(text.encode(), tok_cfg)) == target
    return text


def tok_config(meta):
    return tr.TokConfig(vocab_size=int(meta["vocab_size"]), ngram=int(meta["tok_ngram"]),
                        max_ngrams=int(meta["tok_max_ngrams"]),
                        cjk_bigrams=int(meta["tok_cjk_bigrams"]), seed=int(meta["tok_seed"]))


def write_case(path, model, meta, texts, config_row, all_rows=False):
    tok_cfg = tok_config(meta)
    prompts = [tr.tokenize(t.encode(), tok_cfg) for t in texts]
    chunks, acts, diff = reference(model, prompts)
    T = sum(len(c) for _, c in chunks)
    rows = list(range(T)) if all_rows else sample_rows(chunks)
    tb = [t.encode() for t in texts]
    rec = [("config", np.array(config_row, dtype=np.int32)),
           ("model_id", np.frombuffer(meta["model_id"].encode(), dtype=np.uint8)),
           ("texts", np.frombuffer(b"".join(tb), dtype=np.uint8)),
           ("text_off", np.cumsum([0] + [len(t) for t in tb]).astype(np.int32)),
           ("ids", np.array([i for p in prompts for i in p], dtype=np.int32)),
           ("off", np.cumsum([0] + [len(p) for p in prompts]).astype(np.int32)),
           ("rows", np.array(rows, dtype=np.int32))]
    for name, a in acts.items():
        a = a.numpy().astype(np.float32)
        rec.append((name, a if name in ("pooled", "projected", "out") else a[rows]))
    st_io.write_ref(path, rec)
    print("%s: %d prompts, %d chunks, %d packed tokens, %d rows kept, fused-path diff %.2e"
          % (os.path.basename(path), len(prompts), len(chunks), T, len(rows), diff))


# --- the test configurations ---

# name, d_model, n_layers, activation, seed, prompt lengths in tokens
CASES = [
    ("d64_l1_gelu", 64, 1, "gelu", 11,
     [1, 2, 5, 17, 40, 63, 64, 65, 100, 112, 113, 160, 200, 0]),
    ("d64_l2_relu", 64, 2, "relu", 12,
     [1, 2, 5, 17, 40, 63, 64, 65, 100, 112, 113, 160, 200, 0]),
    ("d256_l1_relu", 256, 1, "relu", 13, [1, 17, 64, 65, 113, 200]),
    ("d256_l2_gelu", 256, 2, "gelu", 14, [1, 17, 64, 65, 113, 200]),
]
VOCAB, HEADS, MAX_LEN, STRIDE, PROJ = 4096, 8, 64, 48, 32


def seeded_case(make_model, outdir, name, d, layers, act, seed, lengths):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.safetensors")
        subprocess.run([make_model, "--seed", str(seed), "--vocab", str(VOCAB), "--d", str(d),
                        "--layers", str(layers), "--heads", str(HEADS), "--max-len",
                        str(MAX_LEN), "--stride", str(STRIDE), "--proj", str(PROJ), "--act",
                        act, "--perturb", "-o", path], check=True)
        tensors, meta = st_io.load(path)
    cfg = st_io.config(meta)
    model = PromptEncoder(cfg).eval()
    model.load_tensors(tensors)
    r = random.Random(seed)
    texts = [make_text(r, n, tok_config(meta)) for n in lengths]
    row = [VOCAB, d, layers, HEADS, 4 * d, MAX_LEN, STRIDE, PROJ, int(act == "relu"), seed, 1]
    write_case(os.path.join(outdir, "enc_%s.ref" % name), model, meta, texts, row)


def tiny_torch_case(outdir):
    """A model initialised by PyTorch itself, exported with st_io.save."""
    torch.manual_seed(5)
    cfg = {"vocab_size": 97, "d_model": 16, "n_layers": 2, "n_heads": 8, "d_ff": 48,
           "max_len": 8, "chunk_stride": 6, "proj_dim": 8, "activation": "gelu"}
    model = PromptEncoder(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))  # exercise every tensor
    tok = tr.TokConfig(vocab_size=97)
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    meta = st_io.metadata(cfg, tok)
    meta["model_id"] = st_io.save(os.path.join(outdir, "tiny_torch.safetensors"), tensors, meta)
    texts = ["wtg-<num> bearing temp <num>", "风机<num>号 齿轮箱温度过高:<num>", "", "a",
             "ups-<num> on battery, load <num>, est. runtime <num> 机房a区温度 <num> 湿度 <num>",
             "core switch <ip> interface gi<num>/<num>/<num> down " * 3]
    write_case(os.path.join(outdir, "tiny_torch.ref"), model, meta, texts, [0] * 11,
               all_rows=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--make-model", default="build/tools/make_model")
    ap.add_argument("outdir", nargs="?", default=os.path.dirname(os.path.abspath(__file__)))
    a = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*nested tensors is in prototype.*")
    for case in CASES:
        seeded_case(a.make_model, a.outdir, *case)
    tiny_torch_case(a.outdir)


if __name__ == "__main__":
    main()
