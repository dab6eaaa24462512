#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// NVRTC (`libnvrtc.so.*`), loaded at run time: compiles CUDA C sources to a CUBIN for the GPU in use, so the
/// binary carries kernel sources, not compiled code for a fixed set of architectures.
public final class NVRTC: @unchecked Sendable {
    typealias Program = OpaquePointer
    let library: DynamicLibrary
    private let nvrtcVersion: @convention(c) (UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>) -> Int32
    private let nvrtcCreateProgram: @convention(c) (UnsafeMutablePointer<Program?>, UnsafePointer<CChar>, UnsafePointer<CChar>,
                                                    Int32, UnsafePointer<UnsafePointer<CChar>?>?,
                                                    UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
    private let nvrtcCompileProgram: @convention(c) (Program, Int32, UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
    private let nvrtcGetProgramLogSize: @convention(c) (Program, UnsafeMutablePointer<Int>) -> Int32
    private let nvrtcGetProgramLog: @convention(c) (Program, UnsafeMutablePointer<CChar>) -> Int32
    private let nvrtcGetCUBINSize: @convention(c) (Program, UnsafeMutablePointer<Int>) -> Int32
    private let nvrtcGetCUBIN: @convention(c) (Program, UnsafeMutablePointer<CChar>) -> Int32
    private let nvrtcDestroyProgram: @convention(c) (UnsafeMutablePointer<Program?>) -> Int32

    /// Opens the newest NVRTC found; nil with the reason when none is.
    public static func load() -> Result<NVRTC, CUDAError> {
        DynamicLibrary.load((11...14).reversed().map { "libnvrtc.so.\($0)" } + ["libnvrtc.so"], what: "NVRTC",
                            override: "KTRANSFORMERS_NVRTC") {
            try NVRTC($0)
        }
    }

    private init(_ l: DynamicLibrary) throws {
        library = l
        nvrtcVersion = try l.symbol("nvrtcVersion", as: type(of: nvrtcVersion))
        nvrtcCreateProgram = try l.symbol("nvrtcCreateProgram", as: type(of: nvrtcCreateProgram))
        nvrtcCompileProgram = try l.symbol("nvrtcCompileProgram", as: type(of: nvrtcCompileProgram))
        nvrtcGetProgramLogSize = try l.symbol("nvrtcGetProgramLogSize", as: type(of: nvrtcGetProgramLogSize))
        nvrtcGetProgramLog = try l.symbol("nvrtcGetProgramLog", as: type(of: nvrtcGetProgramLog))
        nvrtcGetCUBINSize = try l.symbol("nvrtcGetCUBINSize", as: type(of: nvrtcGetCUBINSize))
        nvrtcGetCUBIN = try l.symbol("nvrtcGetCUBIN", as: type(of: nvrtcGetCUBIN))
        nvrtcDestroyProgram = try l.symbol("nvrtcDestroyProgram", as: type(of: nvrtcDestroyProgram))
        // NVRTC opens its builtins library through the loader's search path, not from its own directory: load it
        // from there first, so an NVRTC found by absolute path (CUDA_HOME, /usr/local/cuda) works without
        // LD_LIBRARY_PATH.
        if l.path.hasPrefix("/") {
            var a: Int32 = 0, b: Int32 = 0
            _ = nvrtcVersion(&a, &b)
            let dir = (l.path as NSString).deletingLastPathComponent
            for name in ["libnvrtc-builtins.so.\(a).\(b)", "libnvrtc-builtins.so.\(a)", "libnvrtc-builtins.so"] {
                if dlopen("\(dir)/\(name)", RTLD_NOW | RTLD_GLOBAL) != nil { break }
            }
        }
    }

    public func version() -> (major: Int, minor: Int) {
        var a: Int32 = 0, b: Int32 = 0
        _ = nvrtcVersion(&a, &b)
        return (Int(a), Int(b))
    }

    /// Compiles `source` for `sm_<major><minor>` and returns the CUBIN; a compile error throws with NVRTC's log.
    public func compile(_ source: String, name: String, major: Int, minor: Int, options extra: [String] = []) throws -> [UInt8] {
        var prog: Program?
        let created = source.withCString { s in name.withCString { n in nvrtcCreateProgram(&prog, s, n, 0, nil, nil) } }
        guard created == 0, let p = prog else { throw CUDAError("nvrtcCreateProgram(\(name)) failed: \(created)") }
        defer { _ = nvrtcDestroyProgram(&prog) }
        let options = ["--gpu-architecture=sm_\(major)\(minor)", "--std=c++17", "-default-device"] + extra
        let cOptions = options.map { strdup($0) }
        defer { cOptions.forEach { Glibc.free($0) } }
        let r = cOptions.map { UnsafePointer($0) }.withUnsafeBufferPointer { nvrtcCompileProgram(p, Int32(options.count), $0.baseAddress) }
        if r != 0 {
            var size = 0
            _ = nvrtcGetProgramLogSize(p, &size)
            var log = [CChar](repeating: 0, count: max(1, size))
            _ = nvrtcGetProgramLog(p, &log)
            let text = String(decoding: log.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw CUDAError("NVRTC could not compile \(name) for sm_\(major)\(minor):\n\(text)")
        }
        var size = 0
        _ = nvrtcGetCUBINSize(p, &size)
        var cubin = [CChar](repeating: 0, count: size)
        _ = nvrtcGetCUBIN(p, &cubin)
        return cubin.map { UInt8(bitPattern: $0) }
    }
}
