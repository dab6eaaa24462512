import Backend
import Foundation

/// The heads of one attention layer a tensor-parallel shard holds: an equal share of the query heads and the
/// K/V heads they read. With fewer K/V heads than shards (Gemma 3 270M has one), each shard keeps the one K/V head
/// its query heads belong to, and shards share it (vLLM does the same).
struct HeadSplit {
    let q: Range<Int>
    let kv: Range<Int>

    init(nHead: Int, nKVHead: Int, shard: TensorShard, path: String) throws {
        let n = shard.count
        guard nHead % n == 0 else {
            throw ModelError("\(path): \(nHead) attention heads cannot be split over \(n) tensor-parallel shards (use a divisor of \(nHead))")
        }
        q = shard.part(of: nHead)
        if nKVHead % n == 0 {
            kv = shard.part(of: nKVHead)
        } else if n % nKVHead == 0 {
            let group = nHead / nKVHead
            let head = q.lowerBound / group
            kv = head ..< head + 1
        } else {
            throw ModelError("\(path): \(nKVHead) K/V heads cannot be split over \(n) tensor-parallel shards (the shard count must divide the K/V heads or be a multiple of them)")
        }
    }
}

extension Range where Bound == Int {
    /// The elements of these heads (or units) of `size` elements each.
    func scaled(_ size: Int) -> Range<Int> { lowerBound * size ..< upperBound * size }
}

extension TensorLoader {
    /// This shard's part of a feed-forward width `ff` (all of it without tensor parallelism), in whole blocks of the
    /// type of `down` (the matrix whose columns it splits: 256 for K-quants), as equal as those blocks allow: a
    /// Qwen3-30B-A3B expert's 768 columns are 3 Q4_K blocks, 512 + 256 over 2 shards.
    func feedForwardPart(_ ff: Int, down: String) throws -> Range<Int> {
        guard shard.count > 1 else { return 0..<ff }
        let unit = file.tensor(named: down)?.type.blockSize ?? 1
        guard ff % unit == 0, ff / unit >= shard.count else {
            throw ModelError("\(file.path): feed-forward width \(ff) (tensor '\(down)', blocks of \(unit)) cannot be split over \(shard.count) tensor-parallel shards (use fewer shards)")
        }
        let blocks = ff / unit, i = shard.index, n = shard.count
        return (i * blocks / n) * unit ..< ((i + 1) * blocks / n) * unit
    }

    /// Refuses tensor parallelism for a part of a model it does not split yet (`what`: "MLA attention (DeepSeek)").
    func requireWholeModel(_ what: String) throws {
        guard shard.count == 1 else {
            throw ModelError("\(file.path): tensor parallelism does not split \(what) yet; run this model on one device (without --tensor-parallel / --devices)")
        }
    }
}

/// A model split over several backends by tensor parallelism: shard s holds its share of every layer's attention
/// heads and feed-forward columns (`TensorLoader.shard`), the embedding, norms and output projection whole. Each
/// shard runs the forward pass on its own thread and backend; after each block's attention and feed-forward the
/// shards' partial outputs are summed through the `Collective`, so every shard's residual stream stays the same.
/// Shard 0 computes the logits. One thread and one stream per device, in one process: the shards share the engine,
/// its KV page tables and the host sampler, and a collective between devices of one process needs no launcher.
final class TensorParallelModel: LanguageModel, @unchecked Sendable {
    // NOTE: @unchecked: forward and reserve run on one thread at a time (the LanguageModel contract); the workers
    // only run a shard's forward pass while `forward` waits for them.
    let shards: [DecoderModel]
    let collective: any Collective
    private let workers: [ShardWorker]

    init(shards: [DecoderModel], collective: any Collective) {
        precondition(shards.count == collective.ranks && shards.count >= 2)
        self.shards = shards
        self.collective = collective
        workers = (1..<shards.count).map { ShardWorker(name: "ktransformers shard \($0)") }
    }

    deinit { workers.forEach { $0.stop() } }

    var info: ModelInfo { shards[0].info }
    var backend: any ComputeBackend { shards[0].backend }
    var limits: RunLimits { shards[0].limits }

    func reserve(_ limits: RunLimits) { shards.forEach { $0.reserve(limits) } }

    func makeKVCache(pageSize: Int, numPages: Int) -> KVCache {
        KVCache(shards: shards.map { $0.makeKVCache(pageSize: pageSize, numPages: numPages) })
    }

    func forward(_ batch: ForwardBatch, cache: KVCache) throws -> Tensor {
        precondition(cache.shards.count == shards.count, "a tensor-parallel model runs on the KV pool it made")
        for (i, w) in workers.enumerated() {
            let shard = shards[i + 1], pool = cache.shards[i + 1]
            w.run { _ = try shard.forward(batch, cache: pool) }
        }
        var first: Error?
        var logits: Tensor?
        do { logits = try shards[0].forward(batch, cache: cache.shards[0]) } catch { first = error }
        for w in workers {
            if let e = w.wait(), first == nil { first = e }
        }
        if let first { throw first }
        return logits!
    }
}

/// A thread that runs one job at a time for `TensorParallelModel` (a shard's forward pass).
private final class ShardWorker: @unchecked Sendable {
    // NOTE: @unchecked: `job` and `error` are handed over through the semaphores.
    private let start = DispatchSemaphore(value: 0)
    private let done = DispatchSemaphore(value: 0)
    private var job: (() throws -> Void)?
    private var error: Error?
    private var stopping = false

    init(name: String) {
        let t = Thread { [unowned self] in self.loop() }
        t.name = name
        t.stackSize = 8 << 20
        t.start()
    }

    private func loop() {
        while true {
            start.wait()
            if stopping { done.signal(); return }
            do { try job?() } catch { self.error = error }
            job = nil
            done.signal()
        }
    }

    func run(_ body: @escaping () throws -> Void) {
        job = body
        error = nil
        start.signal()
    }

    /// Waits for the job `run` started; its error, if it threw.
    func wait() -> Error? {
        done.wait()
        return error
    }

    func stop() {
        stopping = true
        start.signal()
        done.wait()
    }
}
