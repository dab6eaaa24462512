import Foundation

/// The backend's kernels: the CUDA C sources of `Kernels/` (embedded in the binary), compiled by NVRTC for the
/// GPU's architecture on first use and cached on disk, so a second start compiles nothing. Kernels are looked up
/// by name once and kept.
final class CUDAKernels: @unchecked Sendable {
    // NOTE: @unchecked: `functions` is filled at load and by the first call of each kernel, under `lock`.
    let driver: CUDADriver
    let module: CUDADriver.Handle
    /// Where the compiled module came from: "compiled in 3.2 s" or "cache <path>".
    let origin: String
    private var functions: [String: CUDADriver.Handle] = [:]
    private let lock = NSLock()

    /// The kernel sources in compile order (common definitions first).
    static var source: String {
        // KTRANSFORMERS_CUDA_PREFETCH=0: the attention kernels without their L2 prefetch (common.cuh).
        (ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_PREFETCH"] == "0" ? "#define KT_ATT_PREFETCH 0\n" : "") +
        // KTRANSFORMERS_CUDA_MVS_DEPTH=N: rows in flight a warp of the batch-1 split-row matmuls (matvec.cu; default 1).
        (ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MVS_DEPTH"].flatMap { Int($0) }
            .map { "#define KT_MVPS_DEPTH \(max(1, min($0, 8)))\n" } ?? "") +
        // KTRANSFORMERS_CUDA_Q16PS_MAXREG=N: registers a thread of the batch-1 down projection (mmq.cu; a measurement).
        (ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_Q16PS_MAXREG"].flatMap { Int($0) }
            .map { "#define KT_Q16PS_MAXREG \(max(32, min($0, 255)))\n" } ?? "") +
        [PackageResources.common_cuh, PackageResources.quant_cuh, PackageResources.matvec_cu,
         PackageResources.activations_cu, PackageResources.ops_cu,
         PackageResources.attention_cu, PackageResources.moe_cu, PackageResources.mmq_cu, PackageResources.gemm_cu]
            .map { String(decoding: $0, as: UTF8.self) }.joined(separator: "\n")
    }

    init(driver: CUDADriver, nvrtc: NVRTC, major: Int, minor: Int) throws {
        self.driver = driver
        let source = Self.source
        let v = nvrtc.version()
        let key = String(Self.fnv1a("\(source)|sm_\(major)\(minor)|nvrtc \(v.major).\(v.minor)|\(try driver.version())"),
                         radix: 16)
        let cacheFile = Self.cacheDirectory.map { "\($0)/kernels-sm\(major)\(minor)-\(key).cubin" }
        if let cacheFile, let data = FileManager.default.contents(atPath: cacheFile),
           let m = try? driver.loadModule([UInt8](data)) {
            module = m
            origin = "cache \(cacheFile)"
            return
        }
        let t0 = Date()
        let image = try nvrtc.compile(source, name: "ktransformers_kernels.cu", major: major, minor: minor)
        module = try driver.loadModule(image)
        origin = String(format: "compiled by NVRTC in %.1f s", Date().timeIntervalSince(t0))
        if let cacheFile {
            // Written to a temporary name then renamed, so a concurrent start never reads half a file.
            let tmp = cacheFile + ".\(getpid()).tmp"
            if FileManager.default.createFile(atPath: tmp, contents: Data(image)) {
                _ = try? FileManager.default.removeItem(atPath: cacheFile)
                _ = try? FileManager.default.moveItem(atPath: tmp, toPath: cacheFile)
            }
        }
    }

    /// `$KTRANSFORMERS_CACHE_DIR/cuda`, else `$XDG_CACHE_HOME/ktransformers/cuda`, else `~/.cache/ktransformers/cuda`
    /// (nil when none can be created: then every start compiles).
    static var cacheDirectory: String? {
        let env = ProcessInfo.processInfo.environment
        let root: String
        if let d = env["KTRANSFORMERS_CACHE_DIR"], !d.isEmpty { root = d }
        else if let d = env["XDG_CACHE_HOME"], !d.isEmpty { root = d + "/ktransformers" }
        else if let h = env["HOME"], !h.isEmpty { root = h + "/.cache/ktransformers" }
        else { return nil }
        let dir = root + "/cuda"
        do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch { return nil }
        return dir
    }

    static func fnv1a(_ s: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }

    /// Kernel `name` (a missing kernel is a programming error).
    func function(_ name: String) -> CUDADriver.Handle {
        lock.lock()
        defer { lock.unlock() }
        if let f = functions[name] { return f }
        do {
            let f = try driver.function(module, named: name)
            functions[name] = f
            return f
        } catch {
            fatalError("CUDA kernel \(name): \(error)")
        }
    }
}

/// One kernel argument, as the kernel's C parameter type.
enum KernelArg {
    /// A device pointer (0 for null).
    case ptr(UInt)
    /// `int`
    case i32(Int)
    /// `long long`
    case i64(Int)
    /// `float`
    case f32(Float)
}

/// Packs kernel arguments into fixed storage (a launch allocates nothing).
final class ArgumentPack {
    private let storage = UnsafeMutableRawPointer.allocate(byteCount: 8 * 64, alignment: 16)
    let pointers = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: 64)

    deinit {
        storage.deallocate()
        pointers.deallocate()
    }

    /// Stores `args`, one 8-byte slot each, and returns the pointer array the driver takes.
    func pack(_ args: [KernelArg]) -> UnsafeMutablePointer<UnsafeMutableRawPointer?> {
        precondition(args.count <= 64, "too many kernel arguments")
        for (i, a) in args.enumerated() {
            let slot = storage + 8 * i
            switch a {
            case .ptr(let p): slot.storeBytes(of: UInt64(p), as: UInt64.self)
            case .i32(let v): slot.storeBytes(of: Int32(truncatingIfNeeded: v), as: Int32.self)
            case .i64(let v): slot.storeBytes(of: Int64(v), as: Int64.self)
            case .f32(let v): slot.storeBytes(of: v, as: Float.self)
            }
            pointers[i] = slot
        }
        return pointers
    }
}
