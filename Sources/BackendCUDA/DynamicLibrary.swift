#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// A shared library opened at run time (`dlopen`), so that the binary needs no CUDA to build or to start: the
/// CUDA driver, NVRTC and cuBLAS are found where the machine has them, or reported missing.
final class DynamicLibrary: @unchecked Sendable {
    let path: String
    private let handle: UnsafeMutableRawPointer

    private init(path: String, handle: UnsafeMutableRawPointer) {
        self.path = path
        self.handle = handle
    }

    /// The first of `names` that opens, tried as given (the loader's search path) and under each of `dirs`.
    /// Returns nil and the loader's last message when none opens.
    static func open(_ names: [String], dirs: [String]) -> (DynamicLibrary?, String) {
        var lastError = "not found"
        var candidates: [String] = []
        for d in dirs { for n in names { candidates.append((d as NSString).appendingPathComponent(n)) } }
        candidates += names
        for c in candidates {
            if c.hasPrefix("/") && !FileManager.default.fileExists(atPath: c) { continue }
            if let h = dlopen(c, RTLD_NOW | RTLD_LOCAL) { return (DynamicLibrary(path: c, handle: h), "") }
            if let e = dlerror() { lastError = String(cString: e) }
        }
        return (nil, lastError)
    }

    /// Opens the first of `names` that loads and binds it with `make`; the failure names `what` was looked for.
    /// `override` names an environment variable that, when set, is the only path tried (the CUDA emulator of the
    /// tests, or a library in an unusual place).
    static func load<T>(_ names: [String], what: String, override: String? = nil,
                        _ make: (DynamicLibrary) throws -> T) -> Result<T, CUDAError> {
        var names = names, dirs = cudaLibraryDirs()
        if let key = override, let path = ProcessInfo.processInfo.environment[key], !path.isEmpty {
            names = [path]
            dirs = []
        }
        let (lib, why) = open(names, dirs: dirs)
        guard let lib else { return .failure(CUDAError("no \(what) (\(names[0]): \(why))")) }
        do { return .success(try make(lib)) } catch let e as CUDAError { return .failure(e) } catch {
            return .failure(CUDAError("\(error)"))
        }
    }

    /// The function `name` as `T`, or nil when the library has none (a newer driver's entry point).
    func optionalSymbol<T>(_ name: String, as type: T.Type) -> T? {
        dlsym(handle, name).map { unsafeBitCast($0, to: type) }
    }

    /// The function `name`, as the C function type `T`.
    func symbol<T>(_ name: String, as type: T.Type) throws -> T {
        guard let p = dlsym(handle, name) else {
            throw CUDAError("\(path): no symbol \(name)")
        }
        return unsafeBitCast(p, to: type)
    }
}

/// A CUDA driver, NVRTC or library failure, with the call and the library's own message.
public struct CUDAError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}

/// Where CUDA libraries are looked for besides the loader's own search path: `$CUDA_HOME` / `$CUDA_PATH`, then
/// the usual install places.
func cudaLibraryDirs() -> [String] {
    var dirs: [String] = []
    let env = ProcessInfo.processInfo.environment
    for key in ["CUDA_HOME", "CUDA_PATH"] {
        if let root = env[key], !root.isEmpty {
            dirs += ["\(root)/lib64", "\(root)/lib", "\(root)/targets/x86_64-linux/lib"]
        }
    }
    dirs += ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu",
             "/usr/local/nvidia/lib64", "/usr/lib64"]
    return dirs
}
