import Backend
import BackendCUDA
import Foundation
import GGUF
import Models
import Tokenizer

extension LoadOptions {
    /// Builds the model split by tensor parallelism over `devices` (`--devices` / `--tensor-parallel`): a backend per
    /// shard (several on one GPU are logical devices of it), the collective that sums their block outputs (NCCL
    /// between distinct GPUs where it loads, device copies otherwise: `KTRANSFORMERS_COLLECTIVE=peer|nccl` forces one),
    /// and the shards' weights, each loaded by its backend.
    func loadTensorParallel(source file: any TensorSource, devices: [Device],
                            onProgress: (@Sendable (Double) -> Void)?) throws -> LoadedModel {
        let cores = threads ?? CPUInfo.physicalCores
        let cpu = CPUBackend(threads: cores)
        var backends: [any ComputeBackend] = []
        var gpus: [CUDABackend] = []
        let ordinals = devices.compactMap { d -> Int? in if case .gpu(let i) = d { return i } else { return nil } }
        let logical = Set(ordinals).count < ordinals.count
        for (rank, d) in devices.enumerated() {
            switch d {
            case .cpu:
                backends.append(CPUBackend(threads: max(1, cores / devices.count)))
            case .gpu(let i):
                do {
                    let g = try CUDABackend.make(ordinal: i, logical: logical ? rank : nil)
                    if rank == 0 { g.onConversion = { Output.err("\($0)\n") } }
                    g.graphsEnabled = cudaGraphs
                    g.batchInvariant = batchInvariant
                    gpus.append(g)
                    backends.append(g)
                } catch {
                    throw CLIError("--devices: shard \(rank) on \(d): \(error)")
                }
            }
        }
        let collective: any Collective
        if gpus.isEmpty {
            collective = HostCollective(ranks: backends.count)
        } else {
            let forced = ProcessInfo.processInfo.environment["KTRANSFORMERS_COLLECTIVE"]
            if forced == "nccl" || (forced != "peer" && !logical) {
                do {
                    collective = try NCCLCollective(backends: gpus)
                } catch {
                    if forced == "nccl" { throw CLIError("KTRANSFORMERS_COLLECTIVE=nccl: \(error)") }
                    Output.err("NCCL not used (\(error)): the shards sum through device copies\n")
                    collective = try CUDAPeerCollective(backends: gpus)
                }
            } else {
                collective = try CUDAPeerCollective(backends: gpus)
            }
        }
        Output.err("tensor parallel over \(backends.count) shards: \(backends.map(\.summary).joined(separator: "; "))\n")
        Output.err("all-reduce after each attention and feed-forward: \(collective.summary)\(gpus.isEmpty ? "" : "; CUDA graphs off (each shard runs its steps op by op)")\n")
        let started = Date()
        let bar = ProgressPrinter(what: "loading \((file.path as NSString).lastPathComponent) over \(devices.map(\.description).joined(separator: ","))")
        let model: LanguageModel
        do {
            model = try ModelRegistry.loadTensorParallel(file, backends: backends, collective: collective, limits: limits,
                                                         progress: { bar.update(done: $0, total: $1); onProgress?(Double($0) / Double(max(1, $1))) })
        } catch {
            bar.finish("failed")
            throw error
        }
        bar.finish(String(format: "loaded in %.1f s", Date().timeIntervalSince(started)))
        for g in gpus {
            let mem = g.memoryInfo()
            Output.err(String(format: "placed on %@: %.2f GiB of weights (%.1f GiB free after load)\n", g.device.description,
                              Double(g.weightBytes) / 1_073_741_824, Double(mem.free) / 1_073_741_824))
        }
        let tokenizer = file.metadata["tokenizer.ggml.model"] == nil ? nil : try Tokenizer(metadata: file.metadata)
        return LoadedModel(file: file, backend: backends[0], cpu: cpu, gpu: gpus.first, gpus: gpus, model: model,
                           tokenizer: tokenizer, contextLength: min(contextLength ?? 4096, model.info.contextLength))
    }
}
