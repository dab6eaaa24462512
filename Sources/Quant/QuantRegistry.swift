/// Which element types have kernels, and their kernels.
public enum QuantRegistry {
    /// The kernels of `type`, or nil when this build cannot compute with it (it may still be read and sized).
    public static func kernels(for type: GGMLType) -> QuantKernels? {
        switch type {
        case .f32: return F32.kernels
        case .f16: return F16.kernels
        case .bf16: return BF16.kernels
        case .q4_0: return Q4_0.kernels
        case .q4_1: return Q4_1.kernels
        case .q5_0: return Q5_0.kernels
        case .q5_1: return Q5_1.kernels
        case .q8_0: return Q8_0.kernels
        case .q8_K: return Q8_K.kernels
        case .q2_K: return Q2_K.kernels
        case .q3_K: return Q3_K.kernels
        case .q4_K: return Q4_K.kernels
        case .q5_K: return Q5_K.kernels
        case .q6_K: return Q6_K.kernels
        case .iq4_nl: return IQ4_NL.kernels
        case .iq4_xs: return IQ4_XS.kernels
        default: return nil
        }
    }

    /// The types `kernels(for:)` answers, in `GGMLType` order.
    public static var supportedTypes: [GGMLType] {
        GGMLType.allCases.filter { kernels(for: $0) != nil }
    }
}
