/// The CUDA driver API (`libcuda.so.1`), loaded at run time: the calls the backend needs, as C function
/// pointers. `CUresult` 0 is success; every wrapper turns another value into a `CUDAError` naming the call and the
/// driver's message.
public final class CUDADriver: @unchecked Sendable {
    public typealias CUdevice = Int32
    public typealias CUdeviceptr = UInt64
    public typealias Handle = OpaquePointer

    let library: DynamicLibrary
    private let cuInit: @convention(c) (UInt32) -> Int32
    private let cuDriverGetVersion: @convention(c) (UnsafeMutablePointer<Int32>) -> Int32
    private let cuDeviceGetCount: @convention(c) (UnsafeMutablePointer<Int32>) -> Int32
    private let cuDeviceGet: @convention(c) (UnsafeMutablePointer<CUdevice>, Int32) -> Int32
    private let cuDeviceGetName: @convention(c) (UnsafeMutablePointer<CChar>, Int32, CUdevice) -> Int32
    private let cuDeviceTotalMem: @convention(c) (UnsafeMutablePointer<Int>, CUdevice) -> Int32
    private let cuDeviceGetAttribute: @convention(c) (UnsafeMutablePointer<Int32>, Int32, CUdevice) -> Int32
    private let cuDevicePrimaryCtxRetain: @convention(c) (UnsafeMutablePointer<Handle?>, CUdevice) -> Int32
    private let cuCtxSetCurrent: @convention(c) (Handle?) -> Int32
    private let cuCtxSynchronize: @convention(c) () -> Int32
    private let cuMemAlloc: @convention(c) (UnsafeMutablePointer<CUdeviceptr>, Int) -> Int32
    private let cuMemFree: @convention(c) (CUdeviceptr) -> Int32
    private let cuMemcpyHtoD: @convention(c) (CUdeviceptr, UnsafeRawPointer, Int) -> Int32
    private let cuMemcpyDtoH: @convention(c) (UnsafeMutableRawPointer, CUdeviceptr, Int) -> Int32
    private let cuModuleLoadData: @convention(c) (UnsafeMutablePointer<Handle?>, UnsafeRawPointer) -> Int32
    private let cuModuleGetFunction: @convention(c) (UnsafeMutablePointer<Handle?>, Handle, UnsafePointer<CChar>) -> Int32
    private let cuLaunchKernel: @convention(c) (Handle, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, Handle?,
                                                UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
                                                UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32
    private let cuGetErrorString: @convention(c) (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Int32

    /// Opens the driver and initialises it; nil with the reason when this machine has none.
    public static func load() -> Result<CUDADriver, CUDAError> {
        DynamicLibrary.load(["libcuda.so.1", "libcuda.so"], what: "CUDA driver") { lib in
            let d = try CUDADriver(lib)
            try d.check(d.cuInit(0), "cuInit")
            return d
        }
    }

    private init(_ l: DynamicLibrary) throws {
        library = l
        cuInit = try l.symbol("cuInit", as: type(of: cuInit))
        cuDriverGetVersion = try l.symbol("cuDriverGetVersion", as: type(of: cuDriverGetVersion))
        cuDeviceGetCount = try l.symbol("cuDeviceGetCount", as: type(of: cuDeviceGetCount))
        cuDeviceGet = try l.symbol("cuDeviceGet", as: type(of: cuDeviceGet))
        cuDeviceGetName = try l.symbol("cuDeviceGetName", as: type(of: cuDeviceGetName))
        cuDeviceTotalMem = try l.symbol("cuDeviceTotalMem_v2", as: type(of: cuDeviceTotalMem))
        cuDeviceGetAttribute = try l.symbol("cuDeviceGetAttribute", as: type(of: cuDeviceGetAttribute))
        cuDevicePrimaryCtxRetain = try l.symbol("cuDevicePrimaryCtxRetain", as: type(of: cuDevicePrimaryCtxRetain))
        cuCtxSetCurrent = try l.symbol("cuCtxSetCurrent", as: type(of: cuCtxSetCurrent))
        cuCtxSynchronize = try l.symbol("cuCtxSynchronize", as: type(of: cuCtxSynchronize))
        cuMemAlloc = try l.symbol("cuMemAlloc_v2", as: type(of: cuMemAlloc))
        cuMemFree = try l.symbol("cuMemFree_v2", as: type(of: cuMemFree))
        cuMemcpyHtoD = try l.symbol("cuMemcpyHtoD_v2", as: type(of: cuMemcpyHtoD))
        cuMemcpyDtoH = try l.symbol("cuMemcpyDtoH_v2", as: type(of: cuMemcpyDtoH))
        cuModuleLoadData = try l.symbol("cuModuleLoadData", as: type(of: cuModuleLoadData))
        cuModuleGetFunction = try l.symbol("cuModuleGetFunction", as: type(of: cuModuleGetFunction))
        cuLaunchKernel = try l.symbol("cuLaunchKernel", as: type(of: cuLaunchKernel))
        cuGetErrorString = try l.symbol("cuGetErrorString", as: type(of: cuGetErrorString))
    }

    func check(_ r: Int32, _ call: String) throws {
        guard r != 0 else { return }
        var msg: UnsafePointer<CChar>?
        _ = cuGetErrorString(r, &msg)
        throw CUDAError("\(call) failed: CUresult \(r) (\(msg.map { String(cString: $0) } ?? "unknown error"))")
    }

    /// The driver's CUDA version, e.g. 13000 for 13.0.
    public func version() throws -> Int {
        var v: Int32 = 0
        try check(cuDriverGetVersion(&v), "cuDriverGetVersion")
        return Int(v)
    }

    public func deviceCount() throws -> Int {
        var n: Int32 = 0
        try check(cuDeviceGetCount(&n), "cuDeviceGetCount")
        return Int(n)
    }

    /// Name, memory and compute capability of device `i`.
    public func properties(_ i: Int) throws -> (name: String, bytes: Int, major: Int, minor: Int, multiprocessors: Int) {
        var d: CUdevice = 0
        try check(cuDeviceGet(&d, Int32(i)), "cuDeviceGet(\(i))")
        var name = [CChar](repeating: 0, count: 256)
        try check(cuDeviceGetName(&name, 256, d), "cuDeviceGetName")
        var bytes = 0
        try check(cuDeviceTotalMem(&bytes, d), "cuDeviceTotalMem")
        func attribute(_ a: Int32) throws -> Int {
            var v: Int32 = 0
            try check(cuDeviceGetAttribute(&v, a, d), "cuDeviceGetAttribute(\(a))")
            return Int(v)
        }
        // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76, MULTIPROCESSOR_COUNT = 16.
        return (String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self), bytes,
                try attribute(75), try attribute(76), try attribute(16))
    }

    /// Makes device `i`'s primary context current on this thread.
    public func useDevice(_ i: Int) throws {
        var d: CUdevice = 0
        try check(cuDeviceGet(&d, Int32(i)), "cuDeviceGet(\(i))")
        var ctx: Handle?
        try check(cuDevicePrimaryCtxRetain(&ctx, d), "cuDevicePrimaryCtxRetain")
        try check(cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    }

    public func allocate(_ bytes: Int) throws -> CUdeviceptr {
        var p: CUdeviceptr = 0
        try check(cuMemAlloc(&p, max(1, bytes)), "cuMemAlloc(\(bytes) bytes)")
        return p
    }

    public func free(_ p: CUdeviceptr) { _ = cuMemFree(p) }

    public func copy(toDevice dst: CUdeviceptr, from src: UnsafeRawPointer, bytes: Int) throws {
        try check(cuMemcpyHtoD(dst, src, bytes), "cuMemcpyHtoD")
    }

    public func copy(toHost dst: UnsafeMutableRawPointer, from src: CUdeviceptr, bytes: Int) throws {
        try check(cuMemcpyDtoH(dst, src, bytes), "cuMemcpyDtoH")
    }

    public func synchronize() throws { try check(cuCtxSynchronize(), "cuCtxSynchronize") }

    /// Loads a compiled module (CUBIN or PTX) and returns its kernel `name`.
    public func function(in image: [UInt8], named name: String) throws -> Handle {
        var module: Handle?
        try image.withUnsafeBytes { try check(cuModuleLoadData(&module, $0.baseAddress!), "cuModuleLoadData") }
        var f: Handle?
        try check(cuModuleGetFunction(&f, module!, name), "cuModuleGetFunction(\(name))")
        return f!
    }

    /// Launches `f` on the default stream with the kernel arguments `args` (each a pointer to its value).
    public func launch(_ f: Handle, grid: (UInt32, UInt32, UInt32), block: (UInt32, UInt32, UInt32), sharedBytes: UInt32 = 0,
                       args: inout [UnsafeMutableRawPointer?]) throws {
        try args.withUnsafeMutableBufferPointer { a in
            try check(cuLaunchKernel(f, grid.0, grid.1, grid.2, block.0, block.1, block.2, sharedBytes, nil, a.baseAddress, nil),
                      "cuLaunchKernel")
        }
    }
}
