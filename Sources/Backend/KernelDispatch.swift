import Foundation
import Quant
// Guarded so Backend still builds (scalar only) in a package that does not declare the CSIMD / QuantAVX2 targets.
#if canImport(CSIMD) && canImport(QuantAVX2)
import CSIMD
import QuantAVX2
#endif

/// Picks the kernels of each element type for this CPU: the AVX2 ones (module QuantAVX2) when CPUID reports
/// AVX2 + FMA + F16C and the environment variable `KTRANSFORMERS_SIMD` is not `scalar`, else the portable
/// scalar ones (`QuantRegistry`).
///
/// QuantAVX2 is compiled for AVX2, so none of its code (lazy initializers included) may run on a CPU without
/// it: everything here checks `useAVX2` before touching that module.
public enum KernelDispatch {
    /// The CSIMD_* feature bits of this CPU (0 off x86-64).
    public static let cpuFeatures: UInt32 = {
        #if canImport(CSIMD) && canImport(QuantAVX2)
        return csimd_cpu_features()
        #else
        return 0
        #endif
    }()

    /// Whether the AVX2 kernels are in use.
    public static let useAVX2: Bool = {
        if let v = ProcessInfo.processInfo.environment["KTRANSFORMERS_SIMD"], v.lowercased() == "scalar" {
            return false
        }
        #if canImport(CSIMD) && canImport(QuantAVX2)
        let need = UInt32(CSIMD_AVX2 | CSIMD_FMA | CSIMD_F16C)
        return cpuFeatures & need == need
        #else
        return false
        #endif
    }()

    /// "avx2" or "scalar": the kernel set `kernels(for:)` answers from.
    public static var isa: String { useAVX2 ? "avx2" : "scalar" }

    /// Every supported type's kernels, built once (only after the CPU check).
    private static let table: [GGMLType: QuantKernels] = {
        var t: [GGMLType: QuantKernels] = [:]
        for type in QuantRegistry.supportedTypes {
            var k = QuantRegistry.kernels(for: type)
            #if canImport(CSIMD) && canImport(QuantAVX2)
            if useAVX2, let fast = QuantAVX2.kernels(for: type) { k = fast }
            #endif
            // Every entry has a vecDotMulti (the reference loop over vecDot where the format has no own one).
            if let k { t[type] = k.withReferenceVecDotMulti() }
        }
        return t
    }()

    /// The kernels of `type` for this CPU, or nil when no build has kernels for it.
    public static func kernels(for type: GGMLType) -> QuantKernels? { table[type] }
}
