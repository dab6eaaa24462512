// f16 <-> f32 on the host, shared by the kernels' prelude (emu_prelude.h) and the emulator library (cuda_emu.cpp:
// its cuBLAS stand-in reads f16 operands).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
static inline float kt_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { float f = std::ldexp((float)man, -24); std::memcpy(&bits, &f, 4); bits |= sign; }
    } else if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else bits = sign | ((exp + 112) << 23) | (man << 13);
    float f; std::memcpy(&f, &bits, 4); return f;
}
static inline uint16_t kt_float_to_half(float f) {
    // float -> f16 bits (round to nearest even)
    uint32_t b; std::memcpy(&b, &f, 4);
    uint32_t sign = b & 0x80000000u; b ^= sign;
    uint16_t h;
    if (b >= 0x47800000u) h = (b > 0x7f800000u) ? 0x7e00 : 0x7c00;   // overflow to inf (NaN kept NaN)
    else if (b < 0x38800000u) {                                       // subnormal or zero
        float a; std::memcpy(&a, &b, 4);
        h = (uint16_t)std::nearbyint(a * 16777216.0f);               // units of 2^-24
    } else {
        uint32_t mant = b & 0x7fffffu, exp = (b >> 23) - 112;
        uint32_t r = (exp << 10) | (mant >> 13), rem = mant & 0x1fff;
        if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
        h = (uint16_t)r;
    }
    return (uint16_t)(h | (sign >> 16));
}
