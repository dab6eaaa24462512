import Foundation

/// What this machine offers the CUDA backend, checked end to end: the driver loads and initialises, each GPU is
/// listed, NVRTC compiles a kernel for the first GPU's architecture, and the kernel runs and gives the right
/// result (`ktransformers devices`). Every step that fails is reported with its reason; none of it needs a CUDA
/// SDK at build time.
public enum CUDAProbe {
    public struct Device: Sendable {
        public var index: Int
        public var name: String
        public var memoryBytes: Int
        public var computeCapability: String
        public var multiprocessors: Int
    }

    public struct Report: Sendable {
        public var driver: String?
        public var driverVersion: Int?
        public var devices: [Device] = []
        public var nvrtc: String?
        public var nvrtcVersion: String?
        /// Seconds NVRTC took to compile the test kernel, and whether it ran correctly.
        public var compileSeconds: Double?
        public var kernelCheck: String?
        /// Why the probe stopped, if it did.
        public var problem: String?
    }

    /// The test kernel: `y[i] = a * x[i] + y[i]`.
    static let saxpy = """
    extern "C" __global__ void saxpy(int n, float a, const float* x, float* y) {
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) y[i] = a * x[i] + y[i];
    }
    """

    public static func run() -> Report {
        var r = Report()
        let driver: CUDADriver
        switch CUDADriver.load() {
        case .failure(let e): r.problem = e.description; return r
        case .success(let d): driver = d
        }
        r.driver = driver.library.path
        do {
            r.driverVersion = try driver.version()
            for i in 0..<(try driver.deviceCount()) {
                let p = try driver.properties(i)
                r.devices.append(Device(index: i, name: p.name, memoryBytes: p.bytes, computeCapability: "\(p.major).\(p.minor)",
                                        multiprocessors: p.multiprocessors))
            }
        } catch {
            r.problem = "\(error)"
            return r
        }
        guard let first = r.devices.first else { r.problem = "the driver sees no GPU"; return r }
        let nvrtc: NVRTC
        switch NVRTC.load() {
        case .failure(let e): r.problem = e.description; return r
        case .success(let n): nvrtc = n
        }
        r.nvrtc = nvrtc.library.path
        let v = nvrtc.version()
        r.nvrtcVersion = "\(v.major).\(v.minor)"
        do {
            let parts = first.computeCapability.split(separator: ".").compactMap { Int($0) }
            let t0 = Date()
            let cubin = try nvrtc.compile(saxpy, name: "saxpy.cu", major: parts[0], minor: parts[1])
            r.compileSeconds = Date().timeIntervalSince(t0)
            try driver.useDevice(0)
            let f = try driver.function(in: cubin, named: "saxpy")
            let n = 1 << 20
            let x = (0..<n).map { Float($0 % 1000) * 0.5 }, y = (0..<n).map { Float($0 % 7) }
            let dx = try driver.allocate(n * 4), dy = try driver.allocate(n * 4)
            defer { driver.free(dx); driver.free(dy) }
            try x.withUnsafeBytes { try driver.copy(toDevice: dx, from: $0.baseAddress!, bytes: n * 4) }
            try y.withUnsafeBytes { try driver.copy(toDevice: dy, from: $0.baseAddress!, bytes: n * 4) }
            var count = Int32(n), a: Float = 2, px = dx, py = dy
            try withUnsafeMutablePointer(to: &count) { c in
                try withUnsafeMutablePointer(to: &a) { ap in
                    try withUnsafeMutablePointer(to: &px) { xp in
                        try withUnsafeMutablePointer(to: &py) { yp in
                            var args: [UnsafeMutableRawPointer?] = [UnsafeMutableRawPointer(c), UnsafeMutableRawPointer(ap),
                                                                    UnsafeMutableRawPointer(xp), UnsafeMutableRawPointer(yp)]
                            try driver.launch(f, grid: (UInt32((n + 255) / 256), 1, 1), block: (256, 1, 1), args: &args)
                        }
                    }
                }
            }
            try driver.synchronize()
            var out = [Float](repeating: 0, count: n)
            try out.withUnsafeMutableBytes { try driver.copy(toHost: $0.baseAddress!, from: dy, bytes: n * 4) }
            let wrong = (0..<n).filter { out[$0] != 2 * x[$0] + y[$0] }.count
            r.kernelCheck = wrong == 0 ? "saxpy over \(n) floats: correct" : "saxpy: \(wrong) of \(n) results wrong"
            if wrong > 0 { r.problem = r.kernelCheck }
        } catch {
            r.problem = "\(error)"
        }
        return r
    }
}
