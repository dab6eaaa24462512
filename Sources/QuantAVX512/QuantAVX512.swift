import Quant

/// The AVX-512 (F+BW+VL) + VNNI kernels. Call only after checking the CPU has those and AVX2+FMA+F16C
/// (`KernelDispatch` does): every function in this module may use them.
///
/// Only the entries measured faster than the AVX2 ones on an AVX-512 VNNI machine are provided; `kernels(for:base:)`
/// overrides those entries of `base` (the AVX2 kernels) and keeps the rest.
public enum QuantAVX512 {
    /// `base` with this module's kernels of `type` swapped in, or nil when it has none for `type`.
    public static func kernels(for type: GGMLType, base: QuantKernels) -> QuantKernels? {
        #if arch(x86_64)
        // Measured on a Zen 4 EPYC (AVX-512 on 256-bit units), single thread, 2048 columns, GB/s of weights
        // (vecDot / vecDotMulti of 4 rows), AVX2 → kept kernel:
        //   Q8_0 36 → 44 / 14.4 → 15.9 (512-bit)    Q5_0 16.5 → 18.7 / 6.9 → 8.6 (512-bit)
        //   Q4_0 17.1 → 18.9 / 6.4 → 7.8 (512-bit)  Q6_K 35.5 → 38 / 13.9 → 17.4 (256-bit VNNI)
        //   Q4_K multi 11.2 → 12.0 (256-bit VNNI). Q5_K's 256-bit VNNI multi was slower (11.0 → 8.1).
        // Both are now replaced by 512-bit kernels (bit-identical to AVX2, page-ahead prefetch): 2 threads over
        // 884 KB expert matrices at random places (the MoE pattern), GB/s: Q4_K 47.2 → 52.4 (256-bit VNNI → 512).
        // Against Q16_K (the expert down projection, 768 columns): AVX2 36.9, 512-bit 41.9.
        // Tile kernels (prefill; same bits as the one-row kernels): Q8_0 / Q5_0 / Q4_0 and Q4_K against quantized
        // activations, Q4_K / Q6_K against f32 ones. Gemma 3 270M Q4_K_M pp512 on a 2-core Zen 5: ~550 → ~1450 t/s
        // together with Attention_AVX512.
        switch type {
        case .q8_0: return base.replacing(vecDot: Q8_0_VNNI.vecDot512, vecDotMulti: Q8_0_VNNI.vecDotMulti512,
                                          vecDotTile: Q8_0_VNNI.tile)
        case .q5_0: return base.replacing(vecDot: Q5_0_VNNI.vecDot512, vecDotMulti: Q5_0_VNNI.vecDotMulti512,
                                          vecDotTile: Q5_0_VNNI.tile)
        case .q4_0: return base.replacing(vecDot: Q4_0_VNNI.vecDot512, vecDotMulti: Q4_0_VNNI.vecDotMulti512,
                                          vecDotTile: Q4_0_VNNI.tile)
        case .q4_K: return base.replacing(vecDot: Q4_K_VNNI.vecDot512, vecDotMulti: Q4_K_VNNI.vecDotMulti512,
                                          vecDotTile: Q4_K_VNNI.tile, dotF32Tile: Q4_K_F32Tile.tile,
                                          q16DotMulti: Q16_VNNI.q4K, q16DotRows: Q16_VNNI.q4KRows)
        case .q5_K: return base.replacing(vecDot: Q5_K_VNNI.vecDot512, vecDotMulti: Q5_K_VNNI.vecDotMulti512,
                                          q16DotMulti: Q16_VNNI.q5K, q16DotRows: Q16_VNNI.q5KRows)
        case .q6_K: return base.replacing(vecDot: Q6_K_VNNI.vecDot, vecDotMulti: Q6_K_VNNI.vecDotMulti,
                                          dotF32Tile: Q6_K_F32Tile.tile, q16DotMulti: Q16_VNNI.q6K, q16DotRows: Q16_VNNI.q6KRows)
        default: return nil
        }
        #else
        return nil
        #endif
    }
}
