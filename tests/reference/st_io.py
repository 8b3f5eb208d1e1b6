"""Reads and writes promptd model files (safetensors layout) without the safetensors package.

Format: u64 little-endian header length N, N bytes of JSON
{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}},
padded with spaces, then the tensors' bytes back to back. kernels/ENCODER.md lists the
metadata keys; model_id is the XXH64 (seed 0) of the data section in 16 hex digits.
"""
import json
import struct

import numpy as np
import xxhash

ARCH = "promptd-encoder"


def load(path):
    """Returns (tensors: dict name -> float32 ndarray, metadata: dict of str)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = blob[8 + n:]
    if meta.get("model_id") != xxhash.xxh64_hexdigest(data):
        raise ValueError("%s: model_id does not match the weights" % path)
    tensors = {}
    for name, e in header.items():
        if e["dtype"] != "F32":
            raise ValueError("%s: dtype %s" % (name, e["dtype"]))
        b, end = e["data_offsets"]
        tensors[name] = np.frombuffer(data[b:end], dtype="<f4").reshape(e["shape"]).copy()
    return tensors, meta


def save(path, tensors, meta):
    """Writes tensors (an ordered dict of float32 arrays, in canonical order) with the
    metadata; fills in model_id and returns it."""
    header, chunks, off = {}, [], 0
    for name, t in tensors.items():
        a = np.ascontiguousarray(t, dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [off, off + a.nbytes]}
        chunks.append(a.tobytes())
        off += a.nbytes
    data = b"".join(chunks)
    meta = dict(meta, model_id=xxhash.xxh64_hexdigest(data))
    header["__metadata__"] = meta
    js = json.dumps(header, sort_keys=True).encode()
    js += b" " * (-len(js) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(js)) + js + data)
    return meta["model_id"]


def metadata(cfg, tok):
    """Metadata strings for an encoder config dict and a tokeniser config."""
    m = {"format": "pt", "arch": ARCH, "activation": cfg["activation"],
         "layer_norm_eps": "1e-05", "tok_version": "1", "tok_ngram": str(tok.ngram),
         "tok_max_ngrams": str(tok.max_ngrams), "tok_cjk_bigrams": str(tok.cjk_bigrams),
         "tok_seed": str(tok.seed)}
    for k in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len",
              "chunk_stride", "proj_dim"):
        m[k] = str(cfg[k])
    return m


def config(meta):
    """Encoder config dict from metadata."""
    cfg = {k: int(meta[k]) for k in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff",
                                      "max_len", "chunk_stride", "proj_dim")}
    cfg["activation"] = meta["activation"]
    cfg["layer_norm_eps"] = float(meta["layer_norm_eps"])
    return cfg


# --- reference tensor files (PDREF01) ---

_DT = {0: "<f4", 1: "<i4", 2: "u1"}


def write_ref(path, records):
    """records: list of (name, ndarray of float32 / int32 / uint8)."""
    with open(path, "wb") as f:
        f.write(b"PDREF01\n" + struct.pack("<I", len(records)))
        for name, a in records:
            a = np.ascontiguousarray(a)
            code = {np.dtype("float32"): 0, np.dtype("int32"): 1, np.dtype("uint8"): 2}[a.dtype]
            nb = name.encode()
            f.write(struct.pack("<H", len(nb)) + nb + struct.pack("<BB", code, a.ndim))
            f.write(struct.pack("<%dI" % a.ndim, *a.shape))
            f.write(a.astype(_DT[code]).tobytes())


def read_ref(path):
    with open(path, "rb") as f:
        blob = f.read()
    assert blob[:8] == b"PDREF01\n"
    (n,), pos, out = struct.unpack_from("<I", blob, 8), 12, {}
    for _ in range(n):
        (ln,) = struct.unpack_from("<H", blob, pos)
        name = blob[pos + 2:pos + 2 + ln].decode()
        pos += 2 + ln
        code, nd = struct.unpack_from("<BB", blob, pos)
        shape = struct.unpack_from("<%dI" % nd, blob, pos + 2)
        pos += 2 + 4 * nd
        a = np.frombuffer(blob, dtype=_DT[code], count=int(np.prod(shape)), offset=pos)
        out[name] = a.reshape(shape)
        pos += a.nbytes
    return out
