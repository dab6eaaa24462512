#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// cuBLAS (`libcublas.so.*`), loaded at run time like the driver and NVRTC: the half-precision GEMM that prefill's
/// matmuls run on once a step has enough tokens (the weights' blocks decoded to f16 by our kernels first). Optional:
/// without it the backend keeps its own int8 / tf32 tensor-core tiles for every step.
///
/// `KTRANSFORMERS_CUBLAS` names the library to open (the CUDA emulator of the tests provides one); `0` or `off`
/// turns cuBLAS off.
final class CUBLAS: @unchecked Sendable {
    typealias Handle = OpaquePointer
    let library: DynamicLibrary
    private let cublasCreate: @convention(c) (UnsafeMutablePointer<Handle?>) -> Int32
    private let cublasDestroy: @convention(c) (Handle) -> Int32
    private let cublasSetStream: @convention(c) (Handle, OpaquePointer?) -> Int32
    private let cublasSetWorkspace: @convention(c) (Handle, UnsafeMutableRawPointer?, Int) -> Int32
    private let cublasGetVersion: @convention(c) (Handle, UnsafeMutablePointer<Int32>) -> Int32
    private let cublasGemmEx: @convention(c) (Handle, Int32, Int32, Int32, Int32, Int32, UnsafeRawPointer,
                                              UnsafeRawPointer, Int32, Int32, UnsafeRawPointer, Int32, Int32,
                                              UnsafeRawPointer, UnsafeMutableRawPointer, Int32, Int32, Int32, Int32) -> Int32
    let handle: Handle
    /// The library's version (e.g. 130100 for 13.1.0).
    let version: Int

    // cublasOperation_t, cudaDataType, cublasComputeType_t, cublasGemmAlgo_t
    static let opN: Int32 = 0, opT: Int32 = 1
    static let r32F: Int32 = 0, r16F: Int32 = 2
    static let compute32F: Int32 = 68
    static let algoDefault: Int32 = -1

    /// Opens the newest cuBLAS found (its Lt library from the same directory first) and makes a handle; a failure
    /// saying why when there is none, or when `KTRANSFORMERS_CUBLAS` turns it off.
    static func load() -> Result<CUBLAS, CUDAError> {
        let env = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUBLAS"] ?? ""
        if env == "0" || env.lowercased() == "off" { return .failure(CUDAError("turned off (KTRANSFORMERS_CUBLAS=\(env))")) }
        let versions = (11...14).reversed()
        if env.isEmpty {
            // libcublas needs libcublasLt; an absolute path's directory is not on the loader's search path.
            outer: for dir in cudaLibraryDirs() {
                for v in versions where FileManager.default.fileExists(atPath: "\(dir)/libcublas.so.\(v)") {
                    _ = dlopen("\(dir)/libcublasLt.so.\(v)", RTLD_NOW | RTLD_GLOBAL)
                    break outer
                }
            }
        }
        return DynamicLibrary.load(versions.map { "libcublas.so.\($0)" } + ["libcublas.so"], what: "cuBLAS",
                                   override: "KTRANSFORMERS_CUBLAS") { try CUBLAS($0) }
    }

    private init(_ l: DynamicLibrary) throws {
        library = l
        cublasCreate = try l.symbol("cublasCreate_v2", as: type(of: cublasCreate))
        cublasDestroy = try l.symbol("cublasDestroy_v2", as: type(of: cublasDestroy))
        cublasSetStream = try l.symbol("cublasSetStream_v2", as: type(of: cublasSetStream))
        cublasSetWorkspace = try l.symbol("cublasSetWorkspace_v2", as: type(of: cublasSetWorkspace))
        cublasGetVersion = try l.symbol("cublasGetVersion_v2", as: type(of: cublasGetVersion))
        cublasGemmEx = try l.symbol("cublasGemmEx", as: type(of: cublasGemmEx))
        var h: Handle?
        let r = cublasCreate(&h)
        guard r == 0, let h else { throw CUDAError("cublasCreate failed (status \(r)): no GPU context, or out of memory") }
        handle = h
        var v: Int32 = 0
        _ = cublasGetVersion(h, &v)
        version = Int(v)
    }

    deinit { _ = cublasDestroy(handle) }

    private func check(_ r: Int32, _ what: String) throws {
        guard r == 0 else { throw CUDAError("\(what) failed (cuBLAS status \(r))") }
    }

    /// Binds the handle to `stream` and to a workspace of ours (so that a GEMM allocates nothing, as a graph capture
    /// requires).
    func bind(stream: CUDADriver.Handle, workspace: UInt, bytes: Int) throws {
        try check(cublasSetStream(handle, stream), "cublasSetStream")
        try check(cublasSetWorkspace(handle, UnsafeMutableRawPointer(bitPattern: workspace), bytes), "cublasSetWorkspace")
    }

    /// `C[n, m] = X[n, k] · A[m, k]ᵀ` for row-major matrices: `a` f16 rows of `k` (leading dimension `k`), `x` f16
    /// rows of `k`, `c` f32 rows with `ldc` floats between rows; f32 accumulation.
    func gemmF16(m: Int, n: Int, k: Int, a: UInt, x: UInt, c: UInt, ldc: Int) throws {
        var alpha: Float = 1, beta: Float = 0
        // Column-major: C (m × n, ldc) = Aᵀ (A stored k × m) · X (k × n).
        try withUnsafeBytes(of: &alpha) { al in
            try withUnsafeBytes(of: &beta) { be in
                try check(cublasGemmEx(handle, Self.opT, Self.opN, Int32(m), Int32(n), Int32(k), al.baseAddress!,
                                       UnsafeRawPointer(bitPattern: a)!, Self.r16F, Int32(k),
                                       UnsafeRawPointer(bitPattern: x)!, Self.r16F, Int32(k), be.baseAddress!,
                                       UnsafeMutableRawPointer(bitPattern: c)!, Self.r32F, Int32(ldc), Self.compute32F,
                                       Self.algoDefault), "cublasGemmEx \(m)x\(n)x\(k)")
            }
        }
    }
}
