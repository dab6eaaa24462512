#!/usr/bin/env python3
"""Makes the fixtures of Tests/QuantTests/Fixtures from the PyPI `gguf` package (gguf-py's NumPy codecs).

For every block format the Quant module reads, `<T>.blocks.bin` holds a few blocks of random bytes (with the
scale fields overwritten by sane finite values) and `<T>.deq.f32` the values gguf-py's `dequantize` decodes
them to (little-endian f32). For the formats the Quant module writes, `<T>.qin.f32` holds random f32 inputs
(several magnitudes, an all-zero block, an all-positive and an all-negative block, outliers) and
`<T>.qout.bin` the bytes of their quantization:
  - F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: gguf-py's `quantize` (which follows ggml's
    `quantize_row_*_ref`);
  - Q4_K, Q6_K, Q8_K: gguf-py has no quantizer for these, so this script carries its own scalar float32 port of
    ggml's reference quantizers (`quantize_row_q4_K_ref` with `make_qkx2_quants`, `quantize_row_q6_K_ref` with
    `make_qx_quants`, `quantize_row_q8_K_ref`), every operation in float32 and in ggml's order. It is
    checked against gguf-py's dequantizer below (the decoded values must be close to the input).
Q8_K has no gguf-py dequantizer either; its `.deq.f32` is d·q computed here.

Usage: python3 scripts/make_quant_fixtures.py [output dir]  (default: Tests/QuantTests/Fixtures)
Deterministic: the same gguf/numpy give the same files.
"""
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

f32 = np.float32

# name -> (type, number of blocks, offsets of f16 scale fields, offsets of f16 fields that must be >= 0)
READ = {
    "F32": (T.F32, 64, [], []),
    "F16": (T.F16, 64, [], []),
    "BF16": (T.BF16, 64, [], []),
    "Q4_0": (T.Q4_0, 8, [0], []),
    "Q4_1": (T.Q4_1, 8, [0, 2], []),
    "Q5_0": (T.Q5_0, 8, [0], []),
    "Q5_1": (T.Q5_1, 8, [0, 2], []),
    "Q8_0": (T.Q8_0, 8, [0], []),
    "Q8_K": (T.Q8_K, 2, [], []),
    "Q2_K": (T.Q2_K, 2, [80], [82]),
    "Q3_K": (T.Q3_K, 2, [108], []),
    "Q4_K": (T.Q4_K, 2, [0], [2]),
    "Q5_K": (T.Q5_K, 2, [0], [2]),
    "Q6_K": (T.Q6_K, 2, [208], []),
    "IQ4_NL": (T.IQ4_NL, 8, [0], []),
    "IQ4_XS": (T.IQ4_XS, 2, [0], []),
}
# name -> number of blocks of quantizer input
WRITE = {
    "F32": 64, "F16": 64, "BF16": 64,
    "Q4_0": 8, "Q4_1": 8, "Q5_0": 8, "Q5_1": 8, "Q8_0": 8,
    "Q8_K": 4, "Q4_K": 16, "Q6_K": 16,
}


def random_blocks(rng, name):
    qtype, nblocks, signed, positive = READ[name]
    block, tsize = GGML_QUANT_SIZES[qtype]
    n = nblocks * block
    if qtype == T.F32:
        return rng.standard_normal(n).astype(np.float32).view(np.uint8)
    if qtype == T.F16:
        return rng.standard_normal(n).astype(np.float16).view(np.uint8)
    if qtype == T.BF16:
        return (rng.standard_normal(n).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    raw = rng.integers(0, 256, size=(nblocks, tsize), dtype=np.uint8)
    for off in signed:
        raw[:, off:off + 2] = (rng.uniform(-1, 1, nblocks) * 0.05).astype(np.float16).view(np.uint8).reshape(-1, 2)
    for off in positive:
        raw[:, off:off + 2] = (rng.uniform(0, 1, nblocks) * 0.05).astype(np.float16).view(np.uint8).reshape(-1, 2)
    if qtype == T.Q8_K:
        raw[:, 0:4] = (rng.uniform(-1, 1, nblocks) * 0.01).astype(np.float32).view(np.uint8).reshape(-1, 4)
        qs = raw[:, 4:260].view(np.int8).astype(np.int32)
        raw[:, 260:292] = qs.reshape(nblocks, 16, 16).sum(-1).astype(np.int16).view(np.uint8).reshape(nblocks, 32)
    return raw.reshape(-1)


def dequantize(name, data):
    qtype = READ[name][0]
    if qtype == T.Q8_K:
        b = data.reshape(-1, 292)
        d = b[:, 0:4].copy().view(np.float32)
        return (d * b[:, 4:260].view(np.int8).astype(np.float32)).reshape(-1)
    return gguf.quants.dequantize(data, qtype).astype(np.float32).reshape(-1)


def quant_inputs(rng, name, nblocks):
    block = GGML_QUANT_SIZES[READ[name][0]][0]
    x = rng.standard_normal((nblocks, block)).astype(np.float32)
    if block == 1:  # plain float formats: one "block" per element; vary magnitudes, keep finite
        return (x * np.float32(10.0) ** rng.uniform(-4, 3, x.shape).astype(np.float32)).reshape(-1)
    scale = (10.0 ** rng.uniform(-3, 1, (nblocks, 1))).astype(np.float32)
    x = x * scale
    x[0] = 0                                    # all zero
    x[1] = np.abs(x[1]) + np.float32(0.01)      # all positive (min > 0 branch)
    x[2] = -np.abs(x[2])                        # all negative
    if nblocks > 3:
        x[3, 5] = np.float32(40) * np.abs(x[3]).max() + np.float32(1)  # one outlier
    return x.reshape(-1)


# --- float32 ports of ggml's reference K-quantizers (gguf-py has none) -----------------------------------------

def nearest_int(v):
    """ggml's nearest_int: the 1.5*2^23 trick (round to nearest, ties to even)."""
    s = np.array(f32(v) + f32(12582912.0), dtype=np.float32)
    return int((s.view(np.int32) & 0x007FFFFF) - 0x00400000)


def f16_round(v):
    return f32(np.float16(f32(v)))


def make_qkx2_quants(n, nmax, x, weights, rmin, rdelta, nstep):
    vmin = x[0]
    vmax = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < vmin:
            vmin = x[i]
        if x[i] > vmax:
            vmax = x[i]
        w = weights[i]
        sum_w = sum_w + w
        sum_x = sum_x + w * x[i]
    if vmin > 0:
        vmin = f32(0)
    if vmax == vmin:
        return f32(0), -vmin, [0] * n
    iscale = f32(nmax) / (vmax - vmin)
    scale = f32(1) / iscale
    best_error = f32(0)
    L = [0] * n
    for i in range(n):
        L[i] = max(0, min(nmax, nearest_int(iscale * (x[i] - vmin))))
        diff = scale * f32(L[i]) + vmin - x[i]
        best_error = best_error + weights[i] * (diff * diff)
    for step in range(nstep + 1):
        iscale = (f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)) / (vmax - vmin)
        sum_l = sum_l2 = sum_xl = f32(0)
        laux = [0] * n
        for i in range(n):
            l = max(0, min(nmax, nearest_int(iscale * (x[i] - vmin))))
            laux[i] = l
            w = weights[i]
            fl = f32(l)
            sum_l = sum_l + w * fl
            sum_l2 = sum_l2 + w * fl * fl
            sum_xl = sum_xl + w * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = f32(0)
                this_scale = sum_xl / sum_l2
            cur = f32(0)
            for i in range(n):
                diff = this_scale * f32(laux[i]) + this_min - x[i]
                cur = cur + weights[i] * (diff * diff)
            if cur < best_error:
                L = laux
                best_error = cur
                scale = this_scale
                vmin = this_min
    return scale, -vmin, L


def get_scale_min_k4(j, q):
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def quantize_q4_K(x):
    out = []
    for xb in x.reshape(-1, 256):
        xb = [f32(v) for v in xb]
        L = [0] * 256
        scales = [f32(0)] * 8
        mins = [f32(0)] * 8
        max_scale = max_min = f32(0)
        for j in range(8):
            xs = xb[32 * j:32 * j + 32]
            sum_x2 = f32(0)
            for v in xs:
                sum_x2 = sum_x2 + v * v
            av_x = np.sqrt(sum_x2 / f32(32))
            weights = [av_x + abs(v) for v in xs]
            scales[j], mins[j], L[32 * j:32 * j + 32] = make_qkx2_quants(32, 15, xs, weights, -1.0, 0.1, 20)
            if scales[j] > max_scale:
                max_scale = scales[j]
            if mins[j] > max_min:
                max_min = mins[j]
        inv_scale = f32(63) / max_scale if max_scale > 0 else f32(0)
        inv_min = f32(63) / max_min if max_min > 0 else f32(0)
        sc = [0] * 12
        for j in range(8):
            ls = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
            lm = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
            if j < 4:
                sc[j] = ls
                sc[j + 4] = lm
            else:
                sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
                sc[j - 4] |= (ls >> 4) << 6
                sc[j] |= (lm >> 4) << 6
        d = np.float16(max_scale / f32(63))
        dmin = np.float16(max_min / f32(63))
        for j in range(8):
            s, m = get_scale_min_k4(j, sc)
            dd = f32(d) * f32(s)
            if dd == 0:
                continue
            dm = f32(dmin) * f32(m)
            for i in range(32):
                L[32 * j + i] = max(0, min(15, nearest_int((xb[32 * j + i] + dm) / dd)))
        qs = [0] * 128
        for c in range(4):
            for l in range(32):
                qs[32 * c + l] = L[64 * c + l] | (L[64 * c + l + 32] << 4)
        out.append(np.concatenate([np.array([d, dmin], dtype=np.float16).view(np.uint8),
                                   np.array(sc + qs, dtype=np.uint8)]))
    return np.concatenate(out)


def make_qx_quants(n, nmax, x):
    vmax = amax = f32(0)
    for v in x:
        if abs(v) > amax:
            amax = abs(v)
            vmax = v
    if amax < f32(1e-15):
        return f32(0), [0] * n
    iscale = f32(-nmax) / vmax
    sumlx = suml2 = f32(0)
    L = [0] * n
    for i in range(n):
        l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L[i] = l + nmax
        w = x[i] * x[i]
        sumlx = sumlx + w * x[i] * f32(l)
        suml2 = suml2 + w * f32(l) * f32(l)
    scale = sumlx / suml2 if suml2 != 0 else f32(0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(f32(nmax) + f32(0.1) * f32(step)) / vmax
        sumlx = suml2 = f32(0)
        for i in range(n):
            l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            w = x[i] * x[i]
            sumlx = sumlx + w * x[i] * f32(l)
            suml2 = suml2 + w * f32(l) * f32(l)
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = nmax + max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale, L


def quantize_q6_K(x):
    out = []
    for xb in x.reshape(-1, 256):
        xb = [f32(v) for v in xb]
        L = [0] * 256
        scales = [f32(0)] * 16
        max_scale = max_abs = f32(0)
        for ib in range(16):
            scales[ib], L[16 * ib:16 * ib + 16] = make_qx_quants(16, 32, xb[16 * ib:16 * ib + 16])
            if abs(scales[ib]) > max_abs:
                max_abs = abs(scales[ib])
                max_scale = scales[ib]
        if max_abs < f32(1e-15):
            out.append(np.zeros(210, dtype=np.uint8))
            continue
        iscale = f32(-128) / max_scale
        d = np.float16(f32(1) / iscale)
        sc = [min(127, nearest_int(iscale * scales[ib])) for ib in range(16)]
        sc = [((v + 128) & 0xFF) - 128 for v in sc]  # int8 storage
        for j in range(16):
            dd = f32(d) * f32(sc[j])
            if dd == 0:
                continue
            for i in range(16):
                L[16 * j + i] = max(-32, min(31, nearest_int(xb[16 * j + i] / dd))) + 32
        ql = [0] * 128
        qh = [0] * 64
        for h in range(2):
            Lh = L[128 * h:128 * h + 128]
            for l in range(32):
                q1, q2, q3, q4 = Lh[l], Lh[l + 32], Lh[l + 64], Lh[l + 96]
                ql[64 * h + l] = (q1 & 0xF) | ((q3 & 0xF) << 4)
                ql[64 * h + l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4)
                qh[32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
        out.append(np.concatenate([np.array(ql + qh, dtype=np.uint8), np.array(sc, dtype=np.int8).view(np.uint8),
                                   np.array([d], dtype=np.float16).view(np.uint8)]))
    return np.concatenate(out)


def quantize_q8_K(x):
    out = []
    for xb in x.reshape(-1, 256):
        xb = [f32(v) for v in xb]
        vmax = amax = f32(0)
        for v in xb:
            if abs(v) > amax:
                amax = abs(v)
                vmax = v
        if amax == 0:
            out.append(np.zeros(292, dtype=np.uint8))  # ggml leaves bsums unset here; we write zeros
            continue
        iscale = f32(-127) / vmax
        qs = np.array([min(127, nearest_int(iscale * v)) for v in xb], dtype=np.int8)
        bsums = qs.astype(np.int32).reshape(16, 16).sum(-1).astype(np.int16)
        out.append(np.concatenate([np.array([f32(1) / iscale], dtype=np.float32).view(np.uint8), qs.view(np.uint8),
                                   bsums.view(np.uint8)]))
    return np.concatenate(out)


OWN = {"Q4_K": quantize_q4_K, "Q6_K": quantize_q6_K, "Q8_K": quantize_q8_K}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "Tests", "QuantTests", "Fixtures")
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(20240601)
    total = 0

    def write(name, arr):
        nonlocal total
        data = np.ascontiguousarray(arr).tobytes()
        with open(os.path.join(outdir, name), "wb") as f:
            f.write(data)
        total += len(data)

    for name in READ:
        blocks = random_blocks(rng, name)
        deq = dequantize(name, blocks)
        assert np.all(np.isfinite(deq)), name
        write(f"{name}.blocks.bin", blocks)
        write(f"{name}.deq.f32", deq.astype("<f4"))

    for name, nblocks in WRITE.items():
        qtype = READ[name][0]
        x = quant_inputs(rng, name, nblocks)
        if name in OWN:
            q = OWN[name](x)
        else:
            q = gguf.quants.quantize(x.reshape(1, -1), qtype).view(np.uint8).reshape(-1)
        assert q.size == x.size // GGML_QUANT_SIZES[qtype][0] * GGML_QUANT_SIZES[qtype][1], name
        # Sanity check of the quantized bytes through the independent decoder.
        back = dequantize(name, q)
        err = np.sqrt(np.mean((back - x) ** 2)) / max(np.sqrt(np.mean(x ** 2)), 1e-30)
        assert err < 0.1, (name, err)
        print(f"{name:6s} quantize: {x.size} values, rms error / rms {err:.5f}")
        write(f"{name}.qin.f32", x.astype("<f4"))
        write(f"{name}.qout.bin", q)

    print(f"wrote {total} bytes to {os.path.normpath(outdir)}")


if __name__ == "__main__":
    main()
