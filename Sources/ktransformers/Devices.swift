import ArgumentParser
import BackendConformance
import BackendCUDA
import Dispatch
import Foundation

/// `ktransformers devices`: what the machine offers the compute backends, checked end to end.
struct Devices: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the CPU and CUDA devices and check that CUDA works here (driver, NVRTC, a test kernel).",
        discussion: "CUDA is loaded at run time (libcuda.so.1, libnvrtc.so.*, searched in $CUDA_HOME, $CUDA_PATH and the usual places); without it everything runs on the CPU. Exits 0 either way; --require-cuda makes a missing or broken CUDA an error.")

    @Flag(name: .customLong("require-cuda"), help: "Exit with an error when CUDA is missing or its test kernel fails.")
    var requireCUDA = false

    @Flag(help: "Print the report as JSON.")
    var json = false

    @Flag(help: "Also run the backend conformance checks (every op of every available backend against plain references, as Tests/BackendTests does) and fail if any fails.")
    var conformance = false

    func run() throws {
        try probe()
        if conformance { try runConformance() }
    }

    func runConformance() throws {
        // The checks print their measurements with `print`: write through the same buffer so lines do not interleave.
        func say(_ s: String) { print(s, terminator: "") }
        var failed = 0
        // One check: its failures (or pass) and its time, under `label`.
        func run(_ label: String, _ body: () throws -> Void) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            let failures = Expect.collect(body)
            let ms = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
            if failures.isEmpty {
                say(String(format: "conformance %@: pass (%.0f ms)\n", label, ms))
            } else {
                failed += 1
                say("conformance \(label): \(failures.count) failures\n")
                for f in failures.prefix(10) { say("  \(f)\n") }
            }
        }
        for (name, make) in BackendConformance.backends {
            guard let backend = try make() else {
                say("conformance [\(name)]: not available here, skipped\n")
                continue
            }
            let c = BackendConformance(name: name, backend: backend)
            for check in BackendConformance.checks { run("[\(name)] \(check.name)") { try check.run(c) } }
        }
        for (name, make) in BackendConformance.collectives {
            guard let (backends, collective) = try make() else {
                say("conformance [collective: \(name)]: not available here, skipped\n")
                continue
            }
            run("[collective: \(name)] allReduceSum (\(collective.summary))") {
                BackendConformance.checkCollective(backends: backends, collective: collective)
            }
        }
        if failed > 0 { throw CLIError("\(failed) conformance checks failed") }
    }

    func probe() throws {
        let r = CUDAProbe.run()
        if json {
            var obj: [String: Any] = ["cpu_threads": ProcessInfo.processInfo.activeProcessorCount]
            obj["cuda_driver"] = r.driver ?? NSNull()
            obj["cuda_driver_version"] = r.driverVersion ?? NSNull()
            obj["nvrtc"] = r.nvrtc ?? NSNull()
            obj["nvrtc_version"] = r.nvrtcVersion ?? NSNull()
            obj["nvrtc_compile_seconds"] = r.compileSeconds ?? NSNull()
            obj["kernel_check"] = r.kernelCheck ?? NSNull()
            obj["problem"] = r.problem ?? NSNull()
            obj["gpus"] = r.devices.map { ["index": $0.index, "name": $0.name, "memory_bytes": $0.memoryBytes,
                                           "compute_capability": $0.computeCapability, "multiprocessors": $0.multiprocessors] as [String: Any] }
            let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .prettyPrinted])
            Output.out(String(decoding: data, as: UTF8.self) + "\n")
        } else {
            var s = "cpu: \(ProcessInfo.processInfo.activeProcessorCount) threads\n"
            if let d = r.driver {
                s += "cuda driver: \(d) (CUDA \(r.driverVersion.map { "\($0 / 1000).\($0 % 1000 / 10)" } ?? "?"))\n"
            }
            for g in r.devices {
                s += String(format: "gpu %d: %@, %.1f GiB, compute capability %@, %d SMs\n", g.index, g.name,
                            Double(g.memoryBytes) / Double(1 << 30), g.computeCapability, g.multiprocessors)
            }
            if let n = r.nvrtc { s += "nvrtc: \(n) (\(r.nvrtcVersion ?? "?"))\n" }
            if let c = r.compileSeconds { s += String(format: "test kernel compiled in %.2f s\n", c) }
            if let k = r.kernelCheck { s += "test kernel: \(k)\n" }
            if let p = r.problem { s += "cuda: not usable: \(p)\n" }
            if r.problem == nil, !r.devices.isEmpty { s += "nccl: \(NCCLCollective.probe())\n" }
            Output.out(s)
        }
        if requireCUDA, let p = r.problem { throw CLIError("CUDA is not usable here: \(p)") }
    }
}
