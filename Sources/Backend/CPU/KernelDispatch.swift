import Foundation
import Quant
// Guarded so Backend still builds (scalar only) in a package that does not declare the CSIMD / QuantAVX2 /
// QuantAVX512 targets.
#if canImport(CSIMD) && canImport(QuantAVX2)
import CSIMD
import QuantAVX2
#endif
#if canImport(CSIMD) && canImport(QuantAVX512)
import QuantAVX512
#endif

/// Picks the kernels of each element type for this CPU, per format the best of:
/// - `avx512`: the AVX-512 (F+BW+VL) + VNNI kernels (module QuantAVX512) where that module has some for the format
///   (it keeps only those measured faster than AVX2), when CPUID reports AVX2+FMA+F16C and AVX512F+BW+VL+VNNI;
/// - `avx2`: the AVX2 kernels (module QuantAVX2) when CPUID reports AVX2 + FMA + F16C;
/// - the portable scalar ones (`QuantRegistry`).
/// The environment variable `KTRANSFORMERS_SIMD` = `scalar` | `avx2` | `avx512` caps the level.
///
/// QuantAVX2 / QuantAVX512 are compiled for their instruction sets, so none of their code (lazy initializers
/// included) may run on a CPU without them: everything here checks `level` before touching those modules.
public enum KernelDispatch {
    /// A kernel set, in increasing order of what the CPU must have.
    public enum Level: Int, Comparable, Sendable, CustomStringConvertible {
        case scalar = 0, avx2 = 1, avx512 = 2
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
        public var description: String {
            switch self {
            case .scalar: return "scalar"
            case .avx2: return "avx2"
            case .avx512: return "avx512"
            }
        }
    }

    /// The CSIMD_* feature bits of this CPU (0 off x86-64).
    public static let cpuFeatures: UInt32 = {
        #if canImport(CSIMD) && canImport(QuantAVX2)
        return csimd_cpu_features()
        #else
        return 0
        #endif
    }()

    /// The best level this CPU (and this build) supports, ignoring `KTRANSFORMERS_SIMD`.
    public static let cpuLevel: Level = {
        #if canImport(CSIMD) && canImport(QuantAVX2)
        let avx2 = UInt32(CSIMD_AVX2 | CSIMD_FMA | CSIMD_F16C)
        guard cpuFeatures & avx2 == avx2 else { return .scalar }
        #if canImport(QuantAVX512)
        let avx512 = UInt32(CSIMD_AVX512F | CSIMD_AVX512BW | CSIMD_AVX512VL | CSIMD_AVX512VNNI)
        if cpuFeatures & avx512 == avx512 { return .avx512 }
        #endif
        return .avx2
        #else
        return .scalar
        #endif
    }()

    /// The level in use: `cpuLevel` capped by `KTRANSFORMERS_SIMD` (unknown values are ignored).
    public static let level: Level = {
        var cap = Level.avx512
        switch ProcessInfo.processInfo.environment["KTRANSFORMERS_SIMD"]?.lowercased() {
        case "scalar": cap = .scalar
        case "avx2": cap = .avx2
        default: break
        }
        return min(cap, cpuLevel)
    }()

    /// Whether the AVX2 kernels (or the AVX-512 ones, which need AVX2 too) are in use.
    public static var useAVX2: Bool { level >= .avx2 }

    /// "avx512", "avx2" or "scalar": the highest kernel set `kernels(for:)` answers from. At "avx512", formats
    /// without AVX-512 kernels still use their AVX2 ones.
    public static var isa: String { level.description }

    /// Every supported type's kernels, built once (only after the CPU check).
    private static let table: [GGMLType: QuantKernels] = {
        var t: [GGMLType: QuantKernels] = [:]
        for type in QuantRegistry.supportedTypes {
            var k = QuantRegistry.kernels(for: type)
            #if canImport(CSIMD) && canImport(QuantAVX2)
            if level >= .avx2, let fast = QuantAVX2.kernels(for: type) { k = fast }
            #endif
            #if canImport(CSIMD) && canImport(QuantAVX512)
            if level >= .avx512, let base = k, let fast = QuantAVX512.kernels(for: type, base: base) { k = fast }
            #endif
            // Every entry has a vecDotMulti and a dotF32Multi (the reference loops where the format has none).
            if let k { t[type] = k.withReferenceMulti() }
        }
        return t
    }()

    /// The kernels of `type` for this CPU, or nil when no build has kernels for it.
    public static func kernels(for type: GGMLType) -> QuantKernels? { table[type] }

    /// The `Q16_K` activation quantizer for this CPU (every level writes the same bytes).
    public static let q16Quantize: QuantKernels.Quantize = {
        #if canImport(CSIMD) && canImport(QuantAVX2) && arch(x86_64)
        if level >= .avx2 { return Q16_AVX2.quantize }
        #endif
        return Q16_K.quantize
    }()

    /// The attention inner loop for this CPU.
    public static let attention: AttentionKernel = {
        #if canImport(CSIMD) && canImport(QuantAVX512) && arch(x86_64)
        if level >= .avx512 {
            return { a in
                Attention_AVX512.attend(q: a.q, g: a.g, headDim: a.headDim, k: a.k, kStride: a.kStride, v: a.v,
                                        vStride: a.vStride, headDimV: a.headDimV, slots: a.slots, count: a.count,
                                        scale: a.scale, softcap: a.softcap, scores: a.scores, out: a.out)
            }
        }
        #endif
        #if canImport(CSIMD) && canImport(QuantAVX2)
        if level >= .avx2 {
            return { a in
                Attention_AVX2.attend(q: a.q, g: a.g, headDim: a.headDim, k: a.k, kStride: a.kStride, v: a.v,
                                      vStride: a.vStride, headDimV: a.headDimV, slots: a.slots, count: a.count,
                                      scale: a.scale, softcap: a.softcap, scores: a.scores, out: a.out)
            }
        }
        #endif
        return ScalarAttention.attend
    }()
}
