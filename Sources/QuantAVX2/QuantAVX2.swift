import Quant

/// The AVX2 + FMA + F16C kernels. Call only after checking the CPU has those (`KernelDispatch` does): every
/// function in this module may use them, the lazy initializers included.
public enum QuantAVX2 {
    /// The AVX2 kernels of `type`, or nil when there are none (the caller falls back to `QuantRegistry`).
    public static func kernels(for type: GGMLType) -> QuantKernels? {
        #if arch(x86_64)
        switch type {
        case .q8_0: return Q8_0_AVX2.kernels
        case .q5_0: return Q5_0_AVX2.kernels
        case .q4_0: return Q4_0_AVX2.kernels
        case .q4_1: return Q4_1_AVX2.kernels
        case .q5_1: return Q5_1_AVX2.kernels
        case .iq4_nl: return IQ4_NL_AVX2.kernels
        case .q4_K: return Q4_K_AVX2.kernels
        case .q6_K: return Q6_K_AVX2.kernels
        case .q5_K: return Q5_K_AVX2.kernels
        case .q3_K: return Q3_K_AVX2.kernels
        case .q2_K: return Q2_K_AVX2.kernels
        case .q8_K: return Q8_K_AVX2.kernels
        case .iq4_xs: return IQ4_XS_AVX2.kernels
        case .f16: return F16_AVX2.kernels
        case .bf16: return BF16_AVX2.kernels
        case .f32: return F32_AVX2.kernels
        default: return nil
        }
        #else
        return nil
        #endif
    }
}
