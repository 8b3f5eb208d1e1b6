"""Writes the tokeniser parity corpus and the ids the reference gives for it.

    /usr/bin/python3 tests/reference/gen_tok_corpus.py [OUTDIR]

Deterministic (random.Random with a fixed seed): the same run gives the same
files. Output, committed under tests/reference/ and read by tests/test_tokenize.c:
  tok_corpus.bin  "PDTOKC1\\n", u32 count, then per string: u32 length, bytes
  tok_ids.bin     "PDTOKI2\\n", u32 configs; per config: u32 vocab_size, u32 ngram,
                  u32 max_ngrams, u32 cjk_bigrams, u64 seed, u32 strings covered;
                  then per string: u32 n, u64 XXH64 (seed 0) of the n ids as u32
                  (a digest keeps the file small; a mismatch still names the string)
All integers little-endian.
"""
import os
import random
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokenize_ref as tr  # noqa: E402
import xxhash  # noqa: E402

N_STRINGS = 10000

EN_WORDS = ("bearing temperature high gearbox oil pressure low generator speed exceeds limit "
            "pitch motor overcurrent yaw misalignment grid frequency voltage wind cut-out "
            "crac return air setpoint ups on battery load runtime pdu outlet current rack "
            "inlet humidity chiller supply water core switch interface down bgp peer state "
            "changed idle ping packet loss sshd failed login from route withdrawn neighbor "
            "unreachable duplicate address detected ntp offset port mac flapping error job "
            "warn disk full backup finished kernel segfault exception module commit deployed "
            "trace service restarted tag value out of range scada point tank level pump "
            "vibration feeder breaker tripped transformer fan expected cell string temp "
            "overheating alarm critical warning cleared acknowledged sensor fault trip "
            "compliance trade order rejected latency spike p99 timeout retry queue depth").split()
EN_RAW = ("WTG-12 bearing temp 92C", "CRAC-04 return air 27.5°C > setpoint 24°C",
          "UPS-2 on battery, load 45 %, est. runtime 12 min", "Ping 8.8.8.8 packet loss 100%",
          "sshd: failed login from 203.0.113.7:52144", "Port 3 MAC 00:1A:2B:3C:4D:5E flapping",
          "Tag PLC1.AI_TEMP_03 value -12.5 out of range", "Fan 2 speed 0 RPM, expected ≥ 3000")
MASKS = ("<num>", "<hex>", "<ip>", "<uuid>", "<ts>")
ZH_WORDS = ("风机 齿轮箱 温度 过高 轴承 发电机 转速 异常 告警 交换机 端口 链路 中断 任务 执行 失败 "
            "机房 湿度 电池 电压 低于 请检查 变电站 主变 跳闸 压力 传感器 读数 超出 量程 叶片 结冰 "
            "冷却 水泵 振动 过大 服务器 宕机 磁盘 空间 不足 网络 延迟 交易 合规 风控 拒绝 订单 "
            "数据中心 空调 回风 设定值 负载 运行时间 已恢复 已确认 严重 紧急").split()
JA_WORDS = "温度 センサー 異常 アラーム ポンプ 停止 ひらがな カタカナ".split()
RANGES = [(0x20, 0x7E, 30), (0xA0, 0x24F, 10), (0x300, 0x36F, 6), (0x370, 0x52F, 6),
          (0x590, 0x6FF, 5), (0x900, 0x97F, 4), (0xE00, 0xE7F, 4), (0x1100, 0x11FF, 2),
          (0x2000, 0x206F, 5), (0x2070, 0x2BFF, 5), (0x3000, 0x30FF, 8), (0x31F0, 0x31FF, 1),
          (0x3400, 0x4DBF, 3), (0x4E00, 0x9FFF, 12), (0xAC00, 0xD7A3, 4), (0xE000, 0xF8FF, 2),
          (0xF900, 0xFAFF, 2), (0xFB00, 0xFFFF, 5), (0x10000, 0x1FFFF, 6),
          (0x1F300, 0x1FAFF, 5), (0x20000, 0x323AF, 5), (0x323B0, 0x10FFFF, 3)]
BAD_BYTES = [b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf", b"\xed\xa0\x80",
             b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80", b"\xff", b"\xfe", b"\xe2\x82",
             b"\xf0\x9f\x98", b"\xc3", b"\xe4\xb8", b"\x00", b"\xf8\x88\x80\x80\x80"]


def en_alarm(r):
    if r.random() < 0.2:
        return r.choice(EN_RAW)
    words = [r.choice(EN_WORDS) for _ in range(r.randint(2, 12))]
    for _ in range(r.randint(0, 3)):
        words.insert(r.randint(0, len(words)), r.choice(MASKS))
    if r.random() < 0.4:
        words[0] = r.choice(["wtg", "crac", "ups", "pdu", "pt", "te"]) + "-<num>"
    sep = r.choice([" ", " ", " ", ", ", ": ", " - "])
    return sep.join(words)


def zh_alarm(r):
    parts = []
    for _ in range(r.randint(1, 8)):
        x = r.random()
        if x < 0.6:
            parts.append(r.choice(ZH_WORDS))
        elif x < 0.75:
            parts.append(r.choice(MASKS))
        elif x < 0.85:
            parts.append(r.choice(EN_WORDS))
        elif x < 0.9:
            parts.append(r.choice(JA_WORDS))
        else:
            parts.append(r.choice(["", " ", ":", ",", "。", "、", "(", ")", "号"]))
    return "".join(parts) if r.random() < 0.6 else " ".join(parts)


def random_cp(r):
    total = sum(w for _, _, w in RANGES)
    x = r.uniform(0, total)
    for lo, hi, w in RANGES:
        if x < w:
            cp = r.randint(lo, hi)
            return cp if not 0xD800 <= cp <= 0xDFFF else 0xFFFD
        x -= w
    return 0x41


def random_unicode(r, n):
    return "".join(chr(random_cp(r)) for _ in range(n)).encode("utf-8")


def invalid_utf8(r):
    out = bytearray()
    for _ in range(r.randint(1, 12)):
        x = r.random()
        if x < 0.35:
            out += r.choice(BAD_BYTES)
        elif x < 0.55:
            out += bytes(r.randrange(256) for _ in range(r.randint(1, 6)))
        elif x < 0.8:
            out += en_alarm(r).encode()[: r.randint(1, 30)]
        else:
            s = zh_alarm(r).encode()
            out += s[: r.randint(0, len(s))]  # may cut a character in two
    return bytes(out)


EDGE = [b"", b" ", b"   ", b"a", b"ab", b"abc", b"abcd", b"<", b">", b"<>", b"<num", b"<num>",
        b"<<num>>", b"< num>", b"<NUM>", b"<num><hex><ip><uuid><ts>", b"x<num>y", b"<nu<num>",
        "风".encode(), "风机".encode(), "<num>风".encode(), "ａｂｃ".encode(), b"\x00abc\x00",
        b"e\xcc\x81t\xc3\xa9", "٣٤٥".encode(), "ⅻ²".encode(), b"a_b-c.d/e", b"\xef\xbf\xbd"]


def long_string(r, k):
    kind = k % 4
    if kind == 0:
        return " ".join(en_alarm(r) for _ in range(r.randint(100, 400))).encode()
    if kind == 1:
        return "".join(zh_alarm(r) for _ in range(r.randint(150, 600))).encode()
    if kind == 2:
        return ("".join(r.choice("abcdefghij") for _ in range(r.randint(5000, 20000)))).encode()
    return random_unicode(r, r.randint(2000, 6000))


def corpus():
    r = random.Random(20240501)
    out = list(EDGE)
    long_at = set(r.sample(range(len(EDGE), N_STRINGS), 24))
    while len(out) < N_STRINGS:
        if len(out) in long_at:
            out.append(long_string(r, len(out)))
            continue
        x = r.random()
        if x < 0.25:
            s = en_alarm(r).encode()
        elif x < 0.45:
            s = zh_alarm(r).encode()
        elif x < 0.6:
            s = random_unicode(r, r.randint(0, 40))
        elif x < 0.75:
            s = invalid_utf8(r)
        elif x < 0.9:
            s = (en_alarm(r) + " " + zh_alarm(r)).encode() + random_unicode(r, r.randint(0, 5))
        else:
            s = bytes(r.randrange(256) for _ in range(r.randint(0, 60)))
        out.append(s)
    return out


CONFIGS = [
    (tr.TokConfig(vocab_size=1 << 20), N_STRINGS),
    (tr.TokConfig(vocab_size=4096, ngram=4, max_ngrams=1, cjk_bigrams=0, seed=7), 2000),
    (tr.TokConfig(vocab_size=65521, ngram=5, max_ngrams=2, cjk_bigrams=1,
                  seed=(1 << 64) - 2), 2000),
    (tr.TokConfig(vocab_size=2, ngram=8, max_ngrams=0, cjk_bigrams=1, seed=0), 500),
]


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    strings = corpus()
    with open(os.path.join(outdir, "tok_corpus.bin"), "wb") as f:
        f.write(b"PDTOKC1\n" + struct.pack("<I", len(strings)))
        for s in strings:
            f.write(struct.pack("<I", len(s)) + s)
    with open(os.path.join(outdir, "tok_ids.bin"), "wb") as f:
        f.write(b"PDTOKI2\n" + struct.pack("<I", len(CONFIGS)))
        for cfg, count in CONFIGS:
            f.write(struct.pack("<IIIIQI", cfg.vocab_size, cfg.ngram, cfg.max_ngrams,
                                cfg.cjk_bigrams, cfg.seed, count))
            for s in strings[:count]:
                ids = tr.tokenize(s, cfg)
                packed = struct.pack("<%dI" % len(ids), *ids)
                f.write(struct.pack("<IQ", len(ids), xxhash.xxh64_intdigest(packed)))


if __name__ == "__main__":
    main()
