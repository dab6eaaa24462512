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
    /// cuLaunchKernelEx (CUDA 12.0+; nil on older drivers): launches with attributes.
    private let cuLaunchKernelEx: (@convention(c) (UnsafeRawPointer, Handle, UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
                                                   UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32)?
    private let cuMemcpyHtoDAsync: @convention(c) (CUdeviceptr, UnsafeRawPointer, Int, Handle?) -> Int32
    private let cuMemcpyDtoHAsync: @convention(c) (UnsafeMutableRawPointer, CUdeviceptr, Int, Handle?) -> Int32
    private let cuMemcpyDtoDAsync: @convention(c) (CUdeviceptr, CUdeviceptr, Int, Handle?) -> Int32
    private let cuMemsetD32Async: @convention(c) (CUdeviceptr, UInt32, Int, Handle?) -> Int32
    private let cuMemAllocHost: @convention(c) (UnsafeMutablePointer<UnsafeMutableRawPointer?>, Int) -> Int32
    private let cuMemFreeHost: @convention(c) (UnsafeMutableRawPointer) -> Int32
    private let cuMemGetInfo: @convention(c) (UnsafeMutablePointer<Int>, UnsafeMutablePointer<Int>) -> Int32
    private let cuStreamCreate: @convention(c) (UnsafeMutablePointer<Handle?>, UInt32) -> Int32
    private let cuStreamSynchronize: @convention(c) (Handle?) -> Int32
    private let cuStreamBeginCapture: @convention(c) (Handle?, Int32) -> Int32
    private let cuStreamEndCapture: @convention(c) (Handle?, UnsafeMutablePointer<Handle?>) -> Int32
    private let cuGraphInstantiateWithFlags: @convention(c) (UnsafeMutablePointer<Handle?>, Handle, UInt64) -> Int32
    private let cuGraphLaunch: @convention(c) (Handle, Handle?) -> Int32
    private let cuGraphDestroy: @convention(c) (Handle) -> Int32
    private let cuGraphExecDestroy: @convention(c) (Handle) -> Int32
    private let cuCtxGetCurrent: @convention(c) (UnsafeMutablePointer<Handle?>) -> Int32
    private let cuGetErrorString: @convention(c) (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Int32
    /// A host function run in stream order (and inside captured graphs, as a host node).
    public typealias HostFunction = @convention(c) (UnsafeMutableRawPointer?) -> Void
    private let cuLaunchHostFunc: @convention(c) (Handle?, HostFunction, UnsafeMutableRawPointer?) -> Int32
    /// Stream memory operations (the V2 entry points, on by default since CUDA 11.7; nil where the driver lacks them).
    private let cuStreamWriteValue32: (@convention(c) (Handle?, CUdeviceptr, UInt32, UInt32) -> Int32)?
    private let cuStreamWaitValue32: (@convention(c) (Handle?, CUdeviceptr, UInt32, UInt32) -> Int32)?
    private let cuMemHostGetDevicePointer: (@convention(c) (UnsafeMutablePointer<CUdeviceptr>, UnsafeMutableRawPointer, UInt32) -> Int32)?
    private let cuEventCreate: @convention(c) (UnsafeMutablePointer<Handle?>, UInt32) -> Int32
    private let cuEventRecord: @convention(c) (Handle, Handle?) -> Int32
    private let cuEventSynchronize: @convention(c) (Handle) -> Int32
    private let cuEventElapsedTime: @convention(c) (UnsafeMutablePointer<Float>, Handle, Handle) -> Int32
    private let cuEventDestroy: @convention(c) (Handle) -> Int32
    private let cuStreamWaitEvent: @convention(c) (Handle?, Handle, UInt32) -> Int32
    private let cuMemcpyPeerAsync: (@convention(c) (CUdeviceptr, Handle, CUdeviceptr, Handle, Int, Handle?) -> Int32)?
    private let cuDeviceCanAccessPeer: (@convention(c) (UnsafeMutablePointer<Int32>, Int32, Int32) -> Int32)?
    private let cuCtxEnablePeerAccess: (@convention(c) (Handle, UInt32) -> Int32)?
    private let cuFuncSetAttribute: @convention(c) (Handle, Int32, Int32) -> Int32
    private let cuOccupancyMaxActiveBlocksPerMultiprocessor: @convention(c) (UnsafeMutablePointer<Int32>, Handle, Int32, Int) -> Int32

    /// Opens the driver and initialises it; nil with the reason when this machine has none.
    public static func load() -> Result<CUDADriver, CUDAError> {
        DynamicLibrary.load(["libcuda.so.1", "libcuda.so"], what: "CUDA driver", override: "KTRANSFORMERS_CUDA_DRIVER") { lib in
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
        cuLaunchKernelEx = l.optionalSymbol("cuLaunchKernelEx", as: (@convention(c) (UnsafeRawPointer, Handle,
            UnsafeMutablePointer<UnsafeMutableRawPointer?>?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32).self)
        cuGetErrorString = try l.symbol("cuGetErrorString", as: type(of: cuGetErrorString))
        cuMemcpyHtoDAsync = try l.symbol("cuMemcpyHtoDAsync_v2", as: type(of: cuMemcpyHtoDAsync))
        cuMemcpyDtoHAsync = try l.symbol("cuMemcpyDtoHAsync_v2", as: type(of: cuMemcpyDtoHAsync))
        cuMemcpyDtoDAsync = try l.symbol("cuMemcpyDtoDAsync_v2", as: type(of: cuMemcpyDtoDAsync))
        cuMemsetD32Async = try l.symbol("cuMemsetD32Async", as: type(of: cuMemsetD32Async))
        cuMemAllocHost = try l.symbol("cuMemAllocHost_v2", as: type(of: cuMemAllocHost))
        cuMemFreeHost = try l.symbol("cuMemFreeHost", as: type(of: cuMemFreeHost))
        cuMemGetInfo = try l.symbol("cuMemGetInfo_v2", as: type(of: cuMemGetInfo))
        cuStreamCreate = try l.symbol("cuStreamCreate", as: type(of: cuStreamCreate))
        cuStreamSynchronize = try l.symbol("cuStreamSynchronize", as: type(of: cuStreamSynchronize))
        cuCtxGetCurrent = try l.symbol("cuCtxGetCurrent", as: type(of: cuCtxGetCurrent))
        cuStreamBeginCapture = try l.symbol("cuStreamBeginCapture_v2", as: type(of: cuStreamBeginCapture))
        cuStreamEndCapture = try l.symbol("cuStreamEndCapture", as: type(of: cuStreamEndCapture))
        cuGraphInstantiateWithFlags = try l.symbol("cuGraphInstantiateWithFlags", as: type(of: cuGraphInstantiateWithFlags))
        cuGraphLaunch = try l.symbol("cuGraphLaunch", as: type(of: cuGraphLaunch))
        cuGraphDestroy = try l.symbol("cuGraphDestroy", as: type(of: cuGraphDestroy))
        cuGraphExecDestroy = try l.symbol("cuGraphExecDestroy", as: type(of: cuGraphExecDestroy))
        cuLaunchHostFunc = try l.symbol("cuLaunchHostFunc", as: type(of: cuLaunchHostFunc))
        typealias MemOp = @convention(c) (Handle?, CUdeviceptr, UInt32, UInt32) -> Int32
        cuStreamWriteValue32 = l.optionalSymbol("cuStreamWriteValue32_v2", as: MemOp.self)
        cuStreamWaitValue32 = l.optionalSymbol("cuStreamWaitValue32_v2", as: MemOp.self)
        cuMemHostGetDevicePointer = l.optionalSymbol("cuMemHostGetDevicePointer_v2", as:
            (@convention(c) (UnsafeMutablePointer<CUdeviceptr>, UnsafeMutableRawPointer, UInt32) -> Int32).self)
        cuEventCreate = try l.symbol("cuEventCreate", as: type(of: cuEventCreate))
        cuEventRecord = try l.symbol("cuEventRecord", as: type(of: cuEventRecord))
        cuEventSynchronize = try l.symbol("cuEventSynchronize", as: type(of: cuEventSynchronize))
        cuEventElapsedTime = try l.symbol("cuEventElapsedTime", as: type(of: cuEventElapsedTime))
        cuEventDestroy = try l.symbol("cuEventDestroy_v2", as: type(of: cuEventDestroy))
        cuStreamWaitEvent = try l.symbol("cuStreamWaitEvent", as: type(of: cuStreamWaitEvent))
        cuMemcpyPeerAsync = l.optionalSymbol("cuMemcpyPeerAsync", as: (@convention(c) (CUdeviceptr, Handle, CUdeviceptr, Handle, Int, Handle?) -> Int32).self)
        cuDeviceCanAccessPeer = l.optionalSymbol("cuDeviceCanAccessPeer", as: (@convention(c) (UnsafeMutablePointer<Int32>, Int32, Int32) -> Int32).self)
        cuCtxEnablePeerAccess = l.optionalSymbol("cuCtxEnablePeerAccess", as: (@convention(c) (Handle, UInt32) -> Int32).self)
        cuFuncSetAttribute = try l.symbol("cuFuncSetAttribute", as: type(of: cuFuncSetAttribute))
        cuOccupancyMaxActiveBlocksPerMultiprocessor = try l.symbol("cuOccupancyMaxActiveBlocksPerMultiprocessor",
                                                                   as: type(of: cuOccupancyMaxActiveBlocksPerMultiprocessor))
    }

    /// Runs `function(data)` on a driver thread once the stream's earlier work is done; later work waits for it.
    /// The function must not call CUDA.
    public func launchHostFunction(_ function: HostFunction, data: UnsafeMutableRawPointer?, stream: Handle?) throws {
        kernelTail = nil
        try check(cuLaunchHostFunc(stream, function, data), "cuLaunchHostFunc")
    }

    /// Whether the stream memory operations below are available.
    public var hasStreamMemoryOperations: Bool {
        cuStreamWriteValue32 != nil && cuStreamWaitValue32 != nil && cuMemHostGetDevicePointer != nil
    }

    /// The device address of page-locked host memory from `allocateHost`.
    public func devicePointer(host p: UnsafeMutableRawPointer) throws -> CUdeviceptr {
        guard let f = cuMemHostGetDevicePointer else { throw CUDAError("cuMemHostGetDevicePointer_v2 is missing from this driver") }
        var d: CUdeviceptr = 0
        try check(f(&d, p, 0), "cuMemHostGetDevicePointer")
        return d
    }

    /// Writes `value` to the 32-bit word at `address` once the stream's earlier work is done (with a memory
    /// barrier: that work's writes are visible first). Captured into graphs as a memory-operation node.
    public func writeValue(_ address: CUdeviceptr, _ value: UInt32, stream: Handle?) throws {
        guard let f = cuStreamWriteValue32 else { throw CUDAError("cuStreamWriteValue32_v2 is missing from this driver") }
        kernelTail = nil
        try check(f(stream, address, value, 0), "cuStreamWriteValue32")
    }

    /// Later work on the stream waits until the 32-bit word at `address` equals `value` (CU_STREAM_WAIT_VALUE_EQ).
    public func waitValue(_ address: CUdeviceptr, equals value: UInt32, stream: Handle?) throws {
        guard let f = cuStreamWaitValue32 else { throw CUDAError("cuStreamWaitValue32_v2 is missing from this driver") }
        kernelTail = nil
        try check(f(stream, address, value, 1), "cuStreamWaitValue32")
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

    /// The shared memory a block of device `i` may opt in to (CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN).
    public func sharedMemoryOptin(_ i: Int) throws -> Int {
        var d: CUdevice = 0
        try check(cuDeviceGet(&d, Int32(i)), "cuDeviceGet(\(i))")
        var v: Int32 = 0
        try check(cuDeviceGetAttribute(&v, 97, d), "cuDeviceGetAttribute(97)")
        return max(48 * 1024, Int(v))
    }

    /// Makes device `i`'s primary context current on this thread and returns it.
    @discardableResult
    public func useDevice(_ i: Int) throws -> Handle {
        var d: CUdevice = 0
        try check(cuDeviceGet(&d, Int32(i)), "cuDeviceGet(\(i))")
        var ctx: Handle?
        try check(cuDevicePrimaryCtxRetain(&ctx, d), "cuDevicePrimaryCtxRetain")
        try check(cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        return ctx!
    }

    /// Makes `ctx` current on the calling thread unless it already is (the backend's ops can come from any thread).
    public func makeCurrent(_ ctx: Handle) throws {
        var cur: Handle?
        _ = cuCtxGetCurrent(&cur)
        if cur != ctx { try check(cuCtxSetCurrent(ctx), "cuCtxSetCurrent") }
    }

    /// Free and total bytes of the current device.
    public func memoryInfo() throws -> (free: Int, total: Int) {
        var f = 0, t = 0
        try check(cuMemGetInfo(&f, &t), "cuMemGetInfo")
        return (f, t)
    }

    public func makeStream() throws -> Handle {
        var s: Handle?
        try check(cuStreamCreate(&s, 1), "cuStreamCreate")  // CU_STREAM_NON_BLOCKING
        return s!
    }

    public func synchronize(_ stream: Handle?) throws { try check(cuStreamSynchronize(stream), "cuStreamSynchronize") }

    public func copyAsync(toDevice dst: CUdeviceptr, from src: UnsafeRawPointer, bytes: Int, stream: Handle?) throws {
        kernelTail = nil
        try check(cuMemcpyHtoDAsync(dst, src, bytes, stream), "cuMemcpyHtoDAsync(\(bytes) bytes)")
    }

    public func copyAsync(toHost dst: UnsafeMutableRawPointer, from src: CUdeviceptr, bytes: Int, stream: Handle?) throws {
        kernelTail = nil
        try check(cuMemcpyDtoHAsync(dst, src, bytes, stream), "cuMemcpyDtoHAsync(\(bytes) bytes)")
    }

    public func copyAsync(device dst: CUdeviceptr, from src: CUdeviceptr, bytes: Int, stream: Handle?) throws {
        kernelTail = nil
        try check(cuMemcpyDtoDAsync(dst, src, bytes, stream), "cuMemcpyDtoDAsync(\(bytes) bytes)")
    }

    public func fill32(_ dst: CUdeviceptr, value: UInt32, count: Int, stream: Handle?) throws {
        kernelTail = nil
        try check(cuMemsetD32Async(dst, value, count, stream), "cuMemsetD32Async")
    }

    /// Page-locked host memory (fast, asynchronous copies).
    public func allocateHost(_ bytes: Int) throws -> UnsafeMutableRawPointer {
        var p: UnsafeMutableRawPointer?
        try check(cuMemAllocHost(&p, max(1, bytes)), "cuMemAllocHost(\(bytes) bytes)")
        return p!
    }

    public func freeHost(_ p: UnsafeMutableRawPointer) { _ = cuMemFreeHost(p) }

    public func allocate(_ bytes: Int) throws -> CUdeviceptr {
        var p: CUdeviceptr = 0
        try check(cuMemAlloc(&p, max(1, bytes)), "cuMemAlloc(\(bytes) bytes)")
        return p
    }

    public func free(_ p: CUdeviceptr) { _ = cuMemFree(p) }

    public func copy(toDevice dst: CUdeviceptr, from src: UnsafeRawPointer, bytes: Int) throws {
        kernelTail = nil
        try check(cuMemcpyHtoD(dst, src, bytes), "cuMemcpyHtoD")
    }

    public func copy(toHost dst: UnsafeMutableRawPointer, from src: CUdeviceptr, bytes: Int) throws {
        kernelTail = nil
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

    /// Launches `f` on `stream` (nil: the default stream) with the kernel arguments `args` (each a pointer to its
    /// value).
    public func launch(_ f: Handle, grid: (UInt32, UInt32, UInt32), block: (UInt32, UInt32, UInt32), sharedBytes: UInt32 = 0,
                       stream: Handle? = nil, args: inout [UnsafeMutableRawPointer?]) throws {
        try args.withUnsafeMutableBufferPointer { a in
            try launch(f, grid: grid, block: block, sharedBytes: sharedBytes, stream: stream, args: a.baseAddress!)
        }
    }

    public func launch(_ f: Handle, grid: (UInt32, UInt32, UInt32), block: (UInt32, UInt32, UInt32), sharedBytes: UInt32,
                       stream: Handle?, args: UnsafeMutablePointer<UnsafeMutableRawPointer?>, dependent: Bool = false) throws {
        // Only right after another kernel on the same stream (not a copy, a host function, an event, cuBLAS, the
        // start of a capture): that is the overlap the attribute is for.
        let afterKernel = kernelTail == .some(stream)
        kernelTail = .some(stream)
        if dependent, afterKernel, let ex = cuLaunchKernelEx {
            // CUlaunchConfig (56 bytes: grid, block, shared bytes, stream, attributes, their count) and one
            // CUlaunchAttribute (72 bytes: id, padding, a 64-byte value) after it.
            try withUnsafeTemporaryAllocation(byteCount: 128, alignment: 8) { raw in
                let p = raw.baseAddress!
                p.initializeMemory(as: UInt8.self, repeating: 0, count: 128)
                for (i, v) in [grid.0, grid.1, grid.2, block.0, block.1, block.2, sharedBytes].enumerated() {
                    p.storeBytes(of: v, toByteOffset: 4 * i, as: UInt32.self)
                }
                p.storeBytes(of: stream, toByteOffset: 32, as: Handle?.self)
                p.storeBytes(of: p + 56, toByteOffset: 40, as: UnsafeMutableRawPointer.self)
                p.storeBytes(of: 1, toByteOffset: 48, as: UInt32.self)
                p.storeBytes(of: Self.programmaticStreamSerialization, toByteOffset: 56, as: Int32.self)
                p.storeBytes(of: 1, toByteOffset: 64, as: Int32.self)   // programmaticStreamSerializationAllowed
                try check(ex(UnsafeRawPointer(p), f, args, nil), "cuLaunchKernelEx")
            }
            dependentLaunches += 1
            return
        }
        try check(cuLaunchKernel(f, grid.0, grid.1, grid.2, block.0, block.1, block.2, sharedBytes, stream, args, nil),
                  "cuLaunchKernel")
    }

    /// CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION: the kernel may start while the previous kernel on the
    /// stream still runs; it waits for that kernel's results itself (`griddepcontrol.wait`, sm_90+).
    static let programmaticStreamSerialization: Int32 = 6
    /// The stream whose last work was a kernel launched through `launch` (nil: other work came after it, e.g. a
    /// copy; `noteOtherWork` for work queued outside the driver, as cuBLAS's).
    private var kernelTail: Handle??
    public func noteOtherWork() { kernelTail = nil }
    /// Kernels launched as programmatic dependents so far (tests).
    public private(set) var dependentLaunches = 0
    /// Whether launches can carry attributes (programmatic dependent launch).
    public var launchesWithAttributes: Bool { cuLaunchKernelEx != nil }

    /// Starts recording the work queued on `stream` (relaxed mode: other threads may still call the driver).
    public func beginCapture(_ stream: Handle) throws {
        kernelTail = nil
        try check(cuStreamBeginCapture(stream, 2), "cuStreamBeginCapture")  // CU_STREAM_CAPTURE_MODE_RELAXED
    }

    /// Ends the recording and returns the instantiated graph.
    public func endCapture(_ stream: Handle) throws -> Handle {
        kernelTail = nil
        var graph: Handle?
        try check(cuStreamEndCapture(stream, &graph), "cuStreamEndCapture")
        defer { _ = cuGraphDestroy(graph!) }
        var exec: Handle?
        try check(cuGraphInstantiateWithFlags(&exec, graph!, 0), "cuGraphInstantiate")
        return exec!
    }

    public func launchGraph(_ exec: Handle, stream: Handle) throws {
        kernelTail = nil
        try check(cuGraphLaunch(exec, stream), "cuGraphLaunch")
    }

    public func destroyGraph(_ exec: Handle) { _ = cuGraphExecDestroy(exec) }

    /// A timing event (`cuEventCreate`, default flags).
    public func makeEvent() throws -> Handle {
        var e: Handle?
        try check(cuEventCreate(&e, 0), "cuEventCreate")
        return e!
    }

    /// An event that a waiting host thread sleeps on instead of spinning (`CU_EVENT_BLOCKING_SYNC`, no timing).
    public func makeBlockingEvent() throws -> Handle {
        var e: Handle?
        try check(cuEventCreate(&e, 0x1 | 0x2), "cuEventCreate")
        return e!
    }

    /// Waits until `event`'s recorded work is done.
    public func wait(_ event: Handle) throws { try check(cuEventSynchronize(event), "cuEventSynchronize") }

    /// Work queued on `stream` after this waits until `event`'s recorded work is done (no host wait).
    public func streamWait(_ stream: Handle?, for event: Handle) throws {
        kernelTail = nil
        try check(cuStreamWaitEvent(stream, event, 0), "cuStreamWaitEvent")
    }


    public func record(_ event: Handle, stream: Handle?) throws { kernelTail = nil; try check(cuEventRecord(event, stream), "cuEventRecord") }

    /// Milliseconds between two recorded events (waits for the later one).
    public func elapsed(from a: Handle, to b: Handle) throws -> Float {
        try check(cuEventSynchronize(b), "cuEventSynchronize")
        var ms: Float = 0
        try check(cuEventElapsedTime(&ms, a, b), "cuEventElapsedTime")
        return ms
    }

    public func destroyEvent(_ e: Handle) { _ = cuEventDestroy(e) }

    /// Copies `bytes` from `src` in context `srcContext` to `dst` in `dstContext` on `stream` (GPUs of one process:
    /// straight over the link where peer access is on, through the host otherwise).
    public func copyPeerAsync(_ dst: CUdeviceptr, _ dstContext: Handle, from src: CUdeviceptr, _ srcContext: Handle, bytes: Int,
                              stream: Handle?) throws {
        kernelTail = nil
        guard let f = cuMemcpyPeerAsync else { throw CUDAError("the driver has no cuMemcpyPeerAsync") }
        try check(f(dst, dstContext, src, srcContext, bytes, stream), "cuMemcpyPeerAsync")
    }

    /// Lets the current context read GPU `peer`'s memory directly where the hardware can (NVLink, PCIe P2P); false
    /// where it cannot (copies between them then go through the host).
    public func enablePeerAccess(from device: Int, to peer: Int, peerContext: Handle) -> Bool {
        guard let can = cuDeviceCanAccessPeer, let enable = cuCtxEnablePeerAccess else { return false }
        var ok: Int32 = 0
        guard can(&ok, Int32(device), Int32(peer)) == 0, ok != 0 else { return false }
        let r = enable(peerContext, 0)
        return r == 0 || r == 704   // CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED
    }

    /// Blocks of kernel `f` (`threads` each, `sharedBytes` of dynamic shared memory) one multiprocessor holds at once
    /// (registers, shared memory and threads counted): the size of a persistent grid.
    public func activeBlocksPerMultiprocessor(_ f: Handle, threads: Int, sharedBytes: Int) throws -> Int {
        var n: Int32 = 0
        try check(cuOccupancyMaxActiveBlocksPerMultiprocessor(&n, f, Int32(threads), sharedBytes),
                  "cuOccupancyMaxActiveBlocksPerMultiprocessor")
        return Int(n)
    }

    /// Lets kernel `f` use `bytes` of dynamic shared memory (above the default 48 KiB).
    public func setMaxDynamicShared(_ f: Handle, bytes: Int) throws {
        try check(cuFuncSetAttribute(f, 8, Int32(bytes)), "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)")
    }

    /// Loads a compiled module (CUBIN or PTX).
    public func loadModule(_ image: [UInt8]) throws -> Handle {
        var module: Handle?
        try image.withUnsafeBytes { try check(cuModuleLoadData(&module, $0.baseAddress!), "cuModuleLoadData") }
        return module!
    }

    /// Kernel `name` of a loaded module.
    public func function(_ module: Handle, named name: String) throws -> Handle {
        var f: Handle?
        try check(cuModuleGetFunction(&f, module, name), "cuModuleGetFunction(\(name))")
        return f!
    }
}
