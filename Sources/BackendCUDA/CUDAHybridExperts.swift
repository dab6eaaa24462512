import Backend
import Dispatch
import Foundation

/// Routed experts on the CPU for a model that runs on the GPU (KTransformers' hybrid MoE): the GPU computes
/// attention, the router and the shared experts; the routed part runs on the CPU backend's executor, straight from
/// the GGUF weights in host memory.
///
/// Everything is ordered on the GPU's stream, so the same calls work op by op and inside a captured CUDA graph
/// (as memcpy and host-function nodes):
///
///     submit: x, ids  --D2H-->  pinned host  →  host function "start": hands the step to the expert thread
///     ...     (the GPU runs the shared experts meanwhile; the CPU threads run the routed ones)
///     wait:   weights --D2H-->  pinned host  →  host function "finish": waits for the expert thread, combines
///             Σ_j w_j·expert_j into a pinned buffer  --H2D-->  device scratch  →  out += scratch (a kernel)
///
/// The host functions never call CUDA. "finish" blocks the stream (not the engine thread) until the CPU is done,
/// so the GPU work after it waits for the routed experts exactly as the math requires.
final class CUDAHybridExpertExecutor: ExpertExecutor, @unchecked Sendable {
    // NOTE: @unchecked: one layer at a time (the ExpertExecutor contract); the expert thread and the host
    // functions hand the work over through semaphores.
    let gpu: CUDABackend
    let inner: any ExpertExecutor
    let dim: Int
    private var maxTokens = 0
    private var maxTopK = 0
    // Pinned host staging.
    private var xHost: UnsafeMutableRawPointer?
    private var idsHost: UnsafeMutableRawPointer?
    private var weightsHost: UnsafeMutableRawPointer?
    private var outHost: UnsafeMutableRawPointer?
    private var outDevice = Tensor(address: 0, count: 0, device: .gpu(0))
    /// One record per (layer weights, tokens, top-k) seen: host nodes of captured graphs keep pointing at them.
    private var jobs: [JobKey: Job] = [:]
    private let worker: ExpertThread

    struct JobKey: Hashable {
        let weights: UInt
        let n: Int
        let topK: Int
    }

    /// What a host function needs: plain data, kept alive by `jobs` for as long as the executor lives.
    final class Job {
        unowned let owner: CUDAHybridExpertExecutor
        let experts: ExpertWeights
        let n: Int
        let topK: Int
        init(owner: CUDAHybridExpertExecutor, experts: ExpertWeights, n: Int, topK: Int) {
            self.owner = owner
            self.experts = experts
            self.n = n
            self.topK = topK
        }
    }

    init(gpu: CUDABackend, inner: any ExpertExecutor, dim: Int) {
        self.gpu = gpu
        self.inner = inner
        self.dim = dim
        worker = ExpertThread()
    }

    deinit {
        if let b = stagingBuffer { gpu.freeWeights(b.address) }
        worker.stop()
        for p in [xHost, idsHost, weightsHost, outHost] { if let p { gpu.driver.freeHost(p) } }
        if outDevice.count > 0 { gpu.release(outDevice) }
    }

    /// The CPU executor's record (steps of the layerwise prefill, which run on the GPU, are not in it).
    var usage: ExpertUsage? { inner.usage }

    func reserve(maxTokens: Int, topK: Int) {
        inner.reserve(maxTokens: maxTokens, topK: topK)
        layerwiseExecutor?.reserve(maxTokens: maxTokens, topK: topK)
        guard maxTokens > self.maxTokens || topK > maxTopK else { return }
        self.maxTokens = max(maxTokens, self.maxTokens)
        maxTopK = max(topK, maxTopK)
        for p in [xHost, idsHost, weightsHost, outHost] { if let p { gpu.driver.freeHost(p) } }
        if outDevice.count > 0 { gpu.release(outDevice) }
        func pinned(_ floats: Int) -> UnsafeMutableRawPointer {
            var p: UnsafeMutableRawPointer?
            gpu.must("pinned expert staging of \(floats * 4) bytes") { p = try gpu.driver.allocateHost(max(4, floats * 4)) }
            RunMemory.noteAllocation()
            return p!
        }
        xHost = pinned(self.maxTokens * dim)
        idsHost = pinned(self.maxTokens * maxTopK)
        weightsHost = pinned(self.maxTokens * maxTopK)
        outHost = pinned(self.maxTokens * dim)
        outDevice = gpu.allocate(self.maxTokens * dim)
        jobs.removeAll()
        gpu.noteScratchMoved()
    }

    private func job(_ experts: ExpertWeights, n: Int, topK: Int) -> Job {
        let key = JobKey(weights: UInt(bitPattern: experts.gate.data), n: n, topK: topK)
        if let j = jobs[key] { return j }
        let j = Job(owner: self, experts: experts, n: n, topK: topK)
        jobs[key] = j
        return j
    }

    func submit(_ experts: ExpertWeights, x: Tensor, ids: Tensor, n: Int, topK: Int) {
        precondition(n <= maxTokens && topK <= maxTopK, "hybrid expert executor reserved for \(maxTokens) tokens, top-\(maxTopK)")
        guard n > 0 else { return }
        layerwiseStep = nil
        if gpu.layerwiseMinTokens > 0, n >= gpu.layerwiseMinTokens, !gpu.capturing, let staged = stageOnGPU(experts) {
            // Layerwise prefill: this layer's experts copied to the GPU and run there on the step's tokens.
            layerwiseStep = staged.executor
            staged.executor.submit(staged.weights, x: x, ids: ids, n: n, topK: topK)
            return
        }
        let j = job(experts, n: n, topK: topK)
        lastSubmitted = j
        gpu.current()
        gpu.must("expert staging (device to host)") {
            try gpu.driver.copyAsync(toHost: xHost!, from: .init(x.address), bytes: n * dim * 4, stream: gpu.stream)
            try gpu.driver.copyAsync(toHost: idsHost!, from: .init(ids.address), bytes: n * topK * 4, stream: gpu.stream)
            try gpu.driver.launchHostFunction(hybridExpertsStart, data: Unmanaged.passUnretained(j).toOpaque(),
                                              stream: gpu.stream)
        }
    }

    func wait(weights: Tensor, accumulateInto out: Tensor, n: Int) {
        if let l = layerwiseStep {
            layerwiseStep = nil
            return l.wait(weights: weights, accumulateInto: out, n: n)
        }
        guard n > 0, let j = lastSubmitted else { return }
        precondition(j.n == n, "wait for \(n) tokens after a submit of \(j.n)")
        gpu.current()
        gpu.must("expert combine (host to device)") {
            try gpu.driver.copyAsync(toHost: weightsHost!, from: .init(weights.address), bytes: n * j.topK * 4, stream: gpu.stream)
            try gpu.driver.launchHostFunction(hybridExpertsFinish, data: Unmanaged.passUnretained(j).toOpaque(),
                                              stream: gpu.stream)
            try gpu.driver.copyAsync(toDevice: .init(outDevice.address), from: outHost!, bytes: n * dim * 4, stream: gpu.stream)
        }
        gpu.add(outDevice, into: out, count: n * dim)
    }

    /// The job of the last submit (one layer at a time: every submit is followed by its wait).
    private var lastSubmitted: Job?

    // MARK: layerwise prefill

    /// The GPU executor of a layerwise step (set between its submit and wait).
    private var layerwiseStep: CUDAExpertExecutor?
    private var layerwiseExecutor: CUDAExpertExecutor?
    /// One layer's expert weights on the device (reused by every layer; grown to the largest), and whether staging
    /// failed once (no memory: the CPU runs every step, said once in the log).
    private var stagingBuffer: (address: UInt, bytes: Int)?
    private var stagingFailed = false
    private var stagedWeights: [Int: CUDAWeight] = [:]

    /// Copies the three stacks into the staging buffer (stream order) and returns them as device stacks with the
    /// GPU executor; nil where the formats have no in-place GPU kernels or the memory is short.
    private func stageOnGPU(_ experts: ExpertWeights) -> (weights: ExpertWeights, executor: CUDAExpertExecutor)? {
        let stacks = [experts.gate, experts.up, experts.down]
        guard !stagingFailed, stacks.allSatisfy({ CUDABackend.formats[$0.type] != nil }),
              experts.gate.count == experts.up.count, experts.gate.count == experts.down.count else { return nil }
        let sizes = stacks.map { $0.count * $0.rows * $0.rowBytes }
        // Each stack at a 256-byte aligned offset (the kernels' 16-byte loads and copies).
        let offsets = [0, (sizes[0] + 255) & ~255, ((sizes[0] + 255) & ~255) + ((sizes[1] + 255) & ~255)]
        let total = offsets[2] + sizes[2]
        if (stagingBuffer?.bytes ?? 0) < total {
            if let b = stagingBuffer { gpu.freeWeights(b.address); stagingBuffer = nil; stagedWeights = [:] }
            do {
                stagingBuffer = (try gpu.allocateWeights(bytes: total, name: "layerwise expert staging"), total)
            } catch {
                stagingFailed = true
                FileHandle.standardError.write(Data("layerwise prefill off: \(error)\n".utf8))
                return nil
            }
        }
        let base = stagingBuffer!.address
        gpu.current()
        gpu.layerwiseStagings += 1
        var device: [WeightStack] = []
        for (i, st) in stacks.enumerated() {
            gpu.must("layerwise expert staging (host to device)") {
                try gpu.driver.copyAsync(toDevice: .init(base + UInt(offsets[i])), from: st.data, bytes: sizes[i], stream: gpu.stream)
            }
            let key = offsets[i] &* 31 &+ st.rowBytes
            let w = stagedWeights[key] ?? CUDAWeight(address: base + UInt(offsets[i]), tag: CUDABackend.formats[st.type]!,
                                                     rowBytes: st.rowBytes, rounding: CUDABackend.rounding(st.kernels),
                                                     kernels: gpu.kernels)
            stagedWeights[key] = w
            guard let d = try? WeightStack(name: st.name, type: st.type, count: st.count, rows: st.rows, cols: st.cols,
                                           data: st.data, device: gpu.device, storage: w) else { return nil }
            device.append(d)
        }
        if layerwiseExecutor == nil || layerwiseExecutor!.nExpert != experts.gate.count || layerwiseExecutor!.ff != experts.gate.rows {
            let e = CUDAExpertExecutor(backend: gpu, nExpert: experts.gate.count, dim: dim, ff: experts.gate.rows)
            e.reserve(maxTokens: maxTokens, topK: maxTopK)
            layerwiseExecutor = e
        }
        return (ExpertWeights(gate: device[0], up: device[1], down: device[2]), layerwiseExecutor!)
    }

    // MARK: host side (driver thread and expert thread; no CUDA here)

    /// Host function "start": the staged x and ids are in place; the expert thread runs the routed experts.
    fileprivate func start(_ j: Job) {
        let x = Tensor(address: UInt(bitPattern: xHost!), count: j.n * dim, device: .cpu)
        let ids = Tensor(address: UInt(bitPattern: idsHost!), count: j.n * j.topK, device: .cpu)
        let inner = inner
        worker.run { inner.submit(j.experts, x: x, ids: ids, n: j.n, topK: j.topK) }
    }

    /// Host function "finish": waits for the experts, then writes `Σ_j w_j · expert_j(x)` per token to `outHost`.
    fileprivate func finish(_ j: Job) {
        worker.waitIdle()
        let out = outHost!.bindMemory(to: Float.self, capacity: j.n * dim)
        out.update(repeating: 0, count: j.n * dim)
        inner.wait(weights: Tensor(address: UInt(bitPattern: weightsHost!), count: j.n * j.topK, device: .cpu),
                   accumulateInto: Tensor(address: UInt(bitPattern: outHost!), count: j.n * dim, device: .cpu), n: j.n)
    }
}

private func hybridExpertsStart(_ data: UnsafeMutableRawPointer?) {
    let j = Unmanaged<CUDAHybridExpertExecutor.Job>.fromOpaque(data!).takeUnretainedValue()
    j.owner.start(j)
}

private func hybridExpertsFinish(_ data: UnsafeMutableRawPointer?) {
    let j = Unmanaged<CUDAHybridExpertExecutor.Job>.fromOpaque(data!).takeUnretainedValue()
    j.owner.finish(j)
}

/// One thread that runs the routed experts handed over by the "start" host function (the CPU backend's thread
/// pool does the work; this thread drives it, so the driver's callback thread returns at once).
final class ExpertThread: @unchecked Sendable {
    // NOTE: @unchecked: `work` is handed over under `lock`.
    private let lock = NSCondition()
    private var work: (() -> Void)?
    private var busy = false
    private var stopping = false
    private var thread: Thread?

    init() {
        // The thread holds the object until `stop` ends its loop.
        let t = Thread { [self] in self.loop() }
        t.name = "ktransformers-experts"
        t.stackSize = 8 << 20
        thread = t
        t.start()
    }

    func run(_ body: @escaping () -> Void) {
        lock.lock()
        while busy { lock.wait() }
        work = body
        busy = true
        lock.broadcast()
        lock.unlock()
    }

    func waitIdle() {
        lock.lock()
        while busy { lock.wait() }
        lock.unlock()
    }

    func stop() {
        lock.lock()
        stopping = true
        lock.broadcast()
        lock.unlock()
    }

    private func loop() {
        // Thread 0 of the expert pool, whose workers are pinned to the other cores: core 0 is this one's.
        ThreadPool.pinCurrentThread(toCore: 0)
        while true {
            lock.lock()
            while work == nil && !stopping { lock.wait() }
            if work == nil && stopping { lock.unlock(); return }
            let w = work!
            work = nil
            lock.unlock()
            w()
            lock.lock()
            busy = false
            lock.broadcast()
            lock.unlock()
        }
    }
}
