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
}
