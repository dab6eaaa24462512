import CSIMD
import Foundation

/// Facts about the host CPU that pick defaults (thread count) and, later, kernels.
public enum CPUInfo {
    /// Physical cores (hyper-threads not counted), from /proc/cpuinfo on Linux; logical CPUs elsewhere.
    public static let physicalCores: Int = {
        let logical = ProcessInfo.processInfo.activeProcessorCount
        #if os(Linux)
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return logical }
        var cores = Set<String>()
        var physical = "0"
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2 else { continue }
            if parts[0] == "physical id" { physical = parts[1] }
            if parts[0] == "core id" { cores.insert(physical + "/" + parts[1]) }
        }
        return cores.isEmpty ? logical : min(cores.count, logical)
        #else
        return logical
        #endif
    }()

    /// One logical CPU per physical core, among the CPUs this process may run on (its affinity mask: a container
    /// may allow fewer than the machine has), cores of socket 0 first: where the thread pool pins its workers.
    /// Empty where the topology cannot be read (the pool then does not pin).
    public static let coreCPUs: [Int] = {
        #if os(Linux)
        var allowed = [Int32](repeating: 0, count: 4096)
        let n = Int(csimd_allowed_cpus(&allowed, Int32(allowed.count)))
        guard n > 0 else { return [] }
        var seen = Set<String>()
        var out: [(socket: Int, cpu: Int)] = []
        for cpu in allowed.prefix(n).map(Int.init) {
            let base = "/sys/devices/system/cpu/cpu\(cpu)/topology/"
            guard let core = try? String(contentsOfFile: base + "core_id", encoding: .utf8),
                  let socket = try? String(contentsOfFile: base + "physical_package_id", encoding: .utf8) else { continue }
            let s = socket.trimmingCharacters(in: .whitespacesAndNewlines)
            if seen.insert(s + "/" + core.trimmingCharacters(in: .whitespacesAndNewlines)).inserted {
                out.append((Int(s) ?? 0, cpu))
            }
        }
        return out.sorted { ($0.socket, $0.cpu) < ($1.socket, $1.cpu) }.map(\.cpu)
        #else
        return []
        #endif
    }()
}

/// The host's memory: how much this process may use, and copies of large blocks on all cores.
public enum HostMemory {
    /// The machine's memory, or its cgroup's limit (v2 `memory.max`, v1 `memory.limit_in_bytes`) where lower: what
    /// page-locked or otherwise unswappable memory must stay well under.
    public static let usableBytes: UInt64 = {
        var m = ProcessInfo.processInfo.physicalMemory
        for f in ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"] {
            if let s = try? String(contentsOfFile: f, encoding: .utf8),
               let v = UInt64(s.trimmingCharacters(in: .whitespacesAndNewlines)) {
                m = min(m, v)
            }
        }
        return m
    }()

    /// Copies `bytes` from `src` to `dst` in 4 MiB parts spread over all cores (one core copies a third of what the
    /// memory can; reading a file's mapping also faults its pages in on every core).
    public static func parallelCopy(_ dst: UnsafeMutableRawPointer, _ src: UnsafeRawPointer, bytes: Int) {
        let chunk = 4 << 20, parts = (bytes + chunk - 1) / chunk
        let d = UInt(bitPattern: dst), s = UInt(bitPattern: src)
        DispatchQueue.concurrentPerform(iterations: parts) { i in
            let lo = i * chunk
            UnsafeMutableRawPointer(bitPattern: d + UInt(lo))!.copyMemory(from: UnsafeRawPointer(bitPattern: s + UInt(lo))!,
                                                                         byteCount: min(chunk, bytes - lo))
        }
    }
}
