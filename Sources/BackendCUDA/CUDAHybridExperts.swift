import Atomics
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
        let late: Int
    }

    /// What a host function needs: plain data, kept alive by `jobs` for as long as the executor lives.
    final class Job {
        unowned let owner: CUDAHybridExpertExecutor
        let experts: ExpertWeights
        let n: Int
        let topK: Int
        /// Choices run one layer late (expert deferral; 0: none).
        let late: Int
        /// The job's index in `jobTable` plus one: what the GPU writes into the mailbox.
        let index: UInt32
        init(owner: CUDAHybridExpertExecutor, experts: ExpertWeights, n: Int, topK: Int, late: Int, index: UInt32) {
            self.owner = owner
            self.experts = experts
            self.n = n
            self.topK = topK
            self.late = late
            self.index = index
        }
    }

    /// Mailbox mode (`HybridMailbox`): the stream hands each layer to the expert thread through words in page-locked
    /// memory (cuStreamWriteValue32 / cuStreamWaitValue32) instead of two host functions, so neither the driver's
    /// callback thread nor a sleeping thread's wake-up sits between the GPU and the CPU. By default where the driver
    /// has the stream memory operations (`CUDABackend.hybridMailbox`; `KTRANSFORMERS_HYBRID_MAILBOX=0` turns it off).
    /// Not for expert deferral.
    private let mailbox: HybridMailbox?
    /// Every job ever made, by index - 1 (the expert thread looks mailbox indices up here, under `jobLock`).
    private var jobTable: [Job] = []
    private let jobLock = NSLock()

    private final class WeakOwner: @unchecked Sendable {
        weak var owner: CUDAHybridExpertExecutor?
    }

    init(gpu: CUDABackend, inner: any ExpertExecutor, dim: Int) {
        self.gpu = gpu
        self.inner = inner
        self.dim = dim
        var m: HybridMailbox?
        if CUDABackend.hybridMailbox, gpu.driver.hasStreamMemoryOperations,
           let host = try? gpu.driver.allocateHost(HybridMailbox.bytes) {
            if let d = try? gpu.driver.devicePointer(host: host) {
                m = HybridMailbox(host: host, device: d)
            } else {
                gpu.driver.freeHost(host)
            }
        }
        mailbox = m
        let box = WeakOwner()
        worker = ExpertThread(mailbox: m) { box.owner?.runMailboxJob($0) }
        box.owner = self
        if m != nil {
            // A graph that holds this executor's mailbox writes may be replayed: the expert thread spins from then on.
            let w = worker
            gpu.graphLaunchHooks.append { [weak w] in w?.arm() }
            gpu.streamWaitHooks.append { [weak w] in
                let mark = w?.settleMark() ?? 0
                return { w?.settle(mark) }
            }
        }
    }

    /// Expert thread, mailbox mode: runs job `index` (x and ids staged), waits for its routing weights, combines
    /// into `outHost` and reports done.
    fileprivate func runMailboxJob(_ index: UInt32) {
        jobLock.lock()
        let j = jobTable[Int(index) - 1]
        jobLock.unlock()
        let m = mailbox!
        let x = Tensor(address: UInt(bitPattern: xHost!), count: j.n * dim, device: .cpu)
        let ids = Tensor(address: UInt(bitPattern: idsHost!), count: j.n * j.topK, device: .cpu)
        inner.submit(j.experts, x: x, ids: ids, n: j.n, topK: j.topK)
        while m.weightsReady.load(ordering: .acquiring) != index { if worker.isStopping { return } }
        m.weightsReady.store(0, ordering: .relaxed)
        outHost!.bindMemory(to: Float.self, capacity: j.n * dim).update(repeating: 0, count: j.n * dim)
        inner.wait(weights: Tensor(address: UInt(bitPattern: weightsHost!), count: j.n * j.topK, device: .cpu),
                   accumulateInto: Tensor(address: UInt(bitPattern: outHost!), count: j.n * dim, device: .cpu), n: j.n)
        m.done.store(index, ordering: .releasing)
        gpu.mailboxJobs.wrappingIncrement(ordering: .relaxed)
    }

    deinit {
        if let c = copyStream { try? gpu.driver.synchronize(c) }
        for s in slots { gpu.freeWeights(s.address); gpu.driver.destroyEvent(s.copied); gpu.driver.destroyEvent(s.consumed) }
        for s in slots { if let h = s.host { gpu.driver.freeHost(h) } }
        worker.stop()
        if let m = mailbox { gpu.driver.freeHost(m.host) }
        for p in [xHost, idsHost, weightsHost, outHost] { if let p { gpu.driver.freeHost(p) } }
        if outDevice.count > 0 { gpu.release(outDevice) }
        deferral.deallocate()
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
        deferral.deallocate()
        deferral = Deferral(tokens: self.maxTokens, topK: maxTopK, dim: dim)
        jobs.removeAll()
        flushJobs.removeAll()
        gpu.noteScratchMoved()
    }

    private func job(_ experts: ExpertWeights, n: Int, topK: Int, late: Int) -> Job {
        let key = JobKey(weights: UInt(bitPattern: experts.gate.data), n: n, topK: topK, late: late)
        if let j = jobs[key] { return j }
        jobLock.lock()
        let j = Job(owner: self, experts: experts, n: n, topK: topK, late: late, index: UInt32(jobTable.count + 1))
        jobTable.append(j)
        jobLock.unlock()
        jobs[key] = j
        return j
    }

    func submit(_ experts: ExpertWeights, x: Tensor, ids: Tensor, n: Int, topK: Int) {
        precondition(n <= maxTokens && topK <= maxTopK, "hybrid expert executor reserved for \(maxTokens) tokens, top-\(maxTopK)")
        guard n > 0 else { return }
        layerwiseStep = nil
        if gpu.layerwiseMinTokens > 0, n >= gpu.layerwiseMinTokens, !gpu.batchInvariant, !gpu.capturing, let staged = stageOnGPU(experts) {
            // Layerwise prefill: this layer's experts copied to the GPU and run there on the step's tokens.
            layerwiseStep = staged.executor
            layerwiseSlot = staged.slot
            staged.executor.submit(staged.weights, x: x, ids: ids, n: n, topK: topK)
            prefetchNext(after: experts, used: staged.slot)
            return
        }
        let late = gpu.deferredExperts > 0 && gpu.deferredExperts < topK ? gpu.deferredExperts : 0
        let j = job(experts, n: n, topK: topK, late: late)
        lastSubmitted = j
        gpu.current()
        if let m = mailbox, late == 0 {
            worker.arm()
            gpu.must("expert staging (device to host)") {
                try gpu.driver.copyAsync(toHost: xHost!, from: .init(x.address), bytes: n * dim * 4, stream: gpu.stream)
                try gpu.driver.copyAsync(toHost: idsHost!, from: .init(ids.address), bytes: n * topK * 4, stream: gpu.stream)
                try gpu.driver.writeValue(m.startAddress, j.index, stream: gpu.stream)
            }
            return
        }
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
            l.wait(weights: weights, accumulateInto: out, n: n)
            // The slot's weights are read by everything queued so far: the next copy into it waits for this point.
            gpu.must("layerwise staging release") { try gpu.driver.record(slots[layerwiseSlot].consumed, stream: gpu.stream) }
            return
        }
        guard n > 0, let j = lastSubmitted else { return }
        precondition(j.n == n, "wait for \(n) tokens after a submit of \(j.n)")
        gpu.current()
        if let m = mailbox, j.late == 0 {
            gpu.must("expert combine (host to device)") {
                try gpu.driver.copyAsync(toHost: weightsHost!, from: .init(weights.address), bytes: n * j.topK * 4, stream: gpu.stream)
                try gpu.driver.writeValue(m.weightsReadyAddress, j.index, stream: gpu.stream)
                try gpu.driver.waitValue(m.doneAddress, equals: j.index, stream: gpu.stream)
                try gpu.driver.writeValue(m.doneAddress, 0, stream: gpu.stream)
                try gpu.driver.copyAsync(toDevice: .init(outDevice.address), from: outHost!, bytes: n * dim * 4, stream: gpu.stream)
            }
            gpu.add(outDevice, into: out, count: n * dim)
            return
        }
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

    /// The GPU executor of a layerwise step (set between its submit and wait), and the staging slot it reads.
    private var layerwiseStep: CUDAExpertExecutor?
    private var layerwiseSlot = 0
    private var layerwiseExecutor: CUDAExpertExecutor?

    /// One layer's expert weights on the device. Two slots when they fit: while the GPU runs layer L's experts from
    /// one, the copy stream fills the other with layer L+1's (learned from the order the layers come in), so the
    /// copy over PCIe overlaps the compute. `copied` is recorded on the copy stream after a slot's copy (the compute
    /// waits for it), `consumed` on the compute stream after the last kernel that reads the slot (the next copy into
    /// it waits for that).
    private final class Slot {
        let address: UInt
        let bytes: Int
        let copied: CUDADriver.Handle
        let consumed: CUDADriver.Handle
        /// Page-locked host memory the layer's stacks are gathered into before the copy, with
        /// `gpu.layerwiseBounce`, made at the first copy that needs it (none when the stacks themselves are page-locked,
        /// `CUDABackend.pageLockedStackMemory`; nil otherwise: copies straight from the pageable mapping, which the
        /// driver stages through its own small buffers, ~9 GB/s; page-locking the mapping itself, cuMemHostRegister of
        /// the mmap'd GGUF, did not return in 90 s on the GPU machine).
        var host: UnsafeMutableRawPointer?
        /// The layer whose weights the slot holds or is being filled with (its gate stack's host address).
        var holds: UInt?
        var weights: [Int: CUDAWeight] = [:]
        init(address: UInt, bytes: Int, copied: CUDADriver.Handle, consumed: CUDADriver.Handle) {
            self.address = address
            self.bytes = bytes
            self.copied = copied
            self.consumed = consumed
        }
    }
    private var slots: [Slot] = []
    private var copyStream: CUDADriver.Handle?
    /// Staging failed once (no device memory): the CPU runs every step, said once in the log.
    private var stagingFailed = false
    /// The layer that followed each layer in the layerwise steps so far, the first layer seen, and the last one.
    private var nextLayer: [UInt: ExpertWeights] = [:]
    private var firstLayer: UInt?
    private var lastLayer: UInt?
    /// `KTRANSFORMERS_LAYERWISE_TRACE=1`: a stderr line per staging step (timings of the host-side calls), to see
    /// where a slow or stuck layerwise prefill spends its time.
    private static let trace = ProcessInfo.processInfo.environment["KTRANSFORMERS_LAYERWISE_TRACE"] == "1"
    private static let traceStart = Date()
    private func traceLine(_ what: @autoclosure () -> String) {
        guard Self.trace else { return }
        FileHandle.standardError.write(Data(String(format: "[layerwise %.3f s] %@\n", Date().timeIntervalSince(Self.traceStart), what()).utf8))
    }

    private static func layout(_ experts: ExpertWeights) -> (sizes: [Int], offsets: [Int], total: Int) {
        let sizes = [experts.gate, experts.up, experts.down].map { $0.count * $0.rows * $0.rowBytes }
        // Each stack at a 256-byte aligned offset (the kernels' 16-byte loads and copies).
        let offsets = [0, (sizes[0] + 255) & ~255, ((sizes[0] + 255) & ~255) + ((sizes[1] + 255) & ~255)]
        return (sizes, offsets, offsets[2] + sizes[2])
    }

    /// Makes two staging slots of `bytes` each (one if two do not fit); false when not even one fits.
    private func ensureSlots(bytes: Int) -> Bool {
        if let s = slots.first, s.bytes >= bytes { return true }
        if let c = copyStream { gpu.must("layerwise copy stream") { try gpu.driver.synchronize(c) } }
        for s in slots {
            gpu.freeWeights(s.address)
            gpu.driver.destroyEvent(s.copied)
            gpu.driver.destroyEvent(s.consumed)
            if let h = s.host { gpu.driver.freeHost(h) }
        }
        slots = []
        gpu.current()
        for i in 0..<2 {
            guard let address = try? gpu.allocateWeights(bytes: bytes, name: "layerwise expert staging \(i)") else { break }
            var events: [CUDADriver.Handle] = []
            gpu.must("layerwise staging events") { events = [try gpu.driver.makeEvent(), try gpu.driver.makeEvent()] }
            slots.append(Slot(address: address, bytes: bytes, copied: events[0], consumed: events[1]))
        }
        if slots.isEmpty {
            stagingFailed = true
            FileHandle.standardError.write(Data(String(format: "layerwise prefill off: %.1f MiB of staging for one layer's experts do not fit in %@'s memory\n",
                                                       Double(bytes) / 1_048_576, gpu.device.description).utf8))
            return false
        }
        if copyStream == nil { gpu.must("layerwise copy stream") { copyStream = try gpu.driver.makeStream() } }
        return true
    }

    /// Prefetches the layer that came after `experts` last time into the slot the step did not use, on the copy stream
    /// (after the step's kernels were queued); not across the end of a pass, where the next step may be small.
    private func prefetchNext(after experts: ExpertWeights, used s: Int) {
        guard slots.count > 1, let next = nextLayer[UInt(bitPattern: experts.gate.data)] else { return }
        let key = UInt(bitPattern: next.gate.data), other = slots[1 - s]
        guard key != firstLayer, other.holds != key, Self.layout(next).total <= other.bytes else { return }
        fill(other, with: next)
    }

    /// Queues the copy of a layer's three stacks into `slot` on the copy stream, after the compute that last read the
    /// slot.
    private func fill(_ slot: Slot, with experts: ExpertWeights) {
        let (sizes, offsets, _) = Self.layout(experts)
        let stacks = [experts.gate, experts.up, experts.down]
        gpu.current()
        let t0 = Date()
        // Stacks already in page-locked memory (copied there at load) go straight to the device; others through the
        // slot's bounce buffer (made on first use) or, without bounce buffers, from the pageable mapping.
        let direct = zip(stacks, sizes).allSatisfy { gpu.isPageLocked($0.0.data, bytes: $0.1) }
        if !direct, gpu.layerwiseBounce, slot.host == nil { slot.host = try? gpu.driver.allocateHost(slot.bytes) }
        let bounce = direct ? nil : slot.host
        if let host = bounce {
            // The bounce buffer's last copy out must be done before it is refilled (it was queued a layer ago).
            gpu.must("layerwise bounce buffer wait") { try gpu.driver.wait(slot.copied) }
            for (i, st) in stacks.enumerated() { HostMemory.parallelCopy(host + offsets[i], st.data, bytes: sizes[i]) }
        }
        defer { traceLine(String(format: "copy of %.1f MiB (%@) queued into slot %d in %.1f ms", Double(sizes.reduce(0, +)) / 1_048_576,
                                 direct ? "from page-locked stacks" : bounce == nil ? "from the mapping" : "through a bounce buffer",
                                 slots.firstIndex { $0 === slot } ?? -1, Date().timeIntervalSince(t0) * 1000)) }
        gpu.must("layerwise expert staging (host to device)") {
            try gpu.driver.streamWait(copyStream, for: slot.consumed)
            if let host = bounce {
                try gpu.driver.copyAsync(toDevice: .init(slot.address), from: host, bytes: offsets[2] + sizes[2], stream: copyStream)
            } else {
                for (i, st) in stacks.enumerated() {
                    try gpu.driver.copyAsync(toDevice: .init(slot.address + UInt(offsets[i])), from: st.data, bytes: sizes[i],
                                             stream: copyStream)
                }
            }
            try gpu.driver.record(slot.copied, stream: copyStream)
        }
        slot.holds = UInt(bitPattern: experts.gate.data)
        gpu.layerwiseStagings += 1
        if direct { gpu.layerwiseDirectStagings += 1 }
    }

    /// The layer's experts as device stacks in a staging slot (copied there now, or prefetched while the previous layer
    /// ran), with the compute stream waiting for the copy, and the GPU executor; nil where the formats have no
    /// in-place GPU kernels or the memory is short.
    private func stageOnGPU(_ experts: ExpertWeights) -> (weights: ExpertWeights, executor: CUDAExpertExecutor, slot: Int)? {
        let stacks = [experts.gate, experts.up, experts.down]
        guard !stagingFailed, stacks.allSatisfy({ CUDABackend.formats[$0.type] != nil }),
              experts.gate.count == experts.up.count, experts.gate.count == experts.down.count else { return nil }
        let (_, offsets, total) = Self.layout(experts)
        guard ensureSlots(bytes: total) else { return nil }
        let key = UInt(bitPattern: experts.gate.data)
        // Learn the order of the layers (the next one is prefetched while this one runs).
        if let last = lastLayer, nextLayer[last] == nil { nextLayer[last] = experts }
        if firstLayer == nil { firstLayer = key }
        lastLayer = key
        let s: Int
        if let hit = slots.firstIndex(where: { $0.holds == key }) {
            s = hit
            gpu.layerwisePrefetchHits += 1
            traceLine("layer \(String(key, radix: 16)): prefetched in slot \(s)")
        } else {
            traceLine("layer \(String(key, radix: 16)): not prefetched")
            // Not prefetched: the slot the previous layer did not use (both are safe: a copy waits for `consumed`).
            s = slots.count > 1 && layerwiseSlot == 0 ? 1 : 0
            fill(slots[s], with: experts)
        }
        let slot = slots[s]
        gpu.current()
        gpu.must("layerwise staging wait") { try gpu.driver.streamWait(gpu.stream, for: slot.copied) }
        var device: [WeightStack] = []
        for (i, st) in stacks.enumerated() {
            let wkey = offsets[i] &* 31 &+ st.rowBytes
            if slot.weights[wkey] == nil { gpu.noteInput(cols: st.cols) }
            let w = slot.weights[wkey] ?? CUDAWeight(address: slot.address + UInt(offsets[i]), tag: CUDABackend.formats[st.type]!,
                                                     rowBytes: st.rowBytes, rounding: CUDABackend.rounding(st.kernels),
                                                     kernels: gpu.kernels)
            slot.weights[wkey] = w
            guard let d = try? WeightStack(name: st.name, type: st.type, count: st.count, rows: st.rows, cols: st.cols,
                                           data: st.data, device: gpu.device, storage: w) else { return nil }
            device.append(d)
        }
        if layerwiseExecutor == nil || layerwiseExecutor!.nExpert != experts.gate.count || layerwiseExecutor!.ff != experts.gate.rows {
            let e = CUDAExpertExecutor(backend: gpu, nExpert: experts.gate.count, dim: dim, ff: experts.gate.rows)
            e.reserve(maxTokens: maxTokens, topK: maxTopK)
            layerwiseExecutor = e
        }
        return (ExpertWeights(gate: device[0], up: device[1], down: device[2]), layerwiseExecutor!, s)
    }

    // MARK: host side (driver thread and expert thread; no CUDA here)

    /// Host function "start": the staged x and ids are in place; the expert thread runs the routed experts (with
    /// deferral, the first `topK - late` choices of each token; the expert thread first finishes the layer before's
    /// deferred ones).
    fileprivate func start(_ j: Job) {
        let x = Tensor(address: UInt(bitPattern: xHost!), count: j.n * dim, device: .cpu)
        let inner = inner
        guard j.late > 0 else {
            let ids = Tensor(address: UInt(bitPattern: idsHost!), count: j.n * j.topK, device: .cpu)
            worker.run { inner.submit(j.experts, x: x, ids: ids, n: j.n, topK: j.topK) }
            return
        }
        worker.waitIdle()
        let now = j.topK - j.late, d = deferral
        let ids = idsHost!.assumingMemoryBound(to: Int32.self)
        for t in 0..<j.n {
            for c in 0..<now { d.nowIds[t * now + c] = ids[t * j.topK + c] }
            for c in 0..<j.late { d.lateIds[t * j.late + c] = ids[t * j.topK + now + c] }
        }
        let nowIds = Tensor(address: UInt(bitPattern: d.nowIds), count: j.n * now, device: .cpu)
        worker.run { inner.submit(j.experts, x: x, ids: nowIds, n: j.n, topK: now) }
    }

    /// Host function "finish": waits for the experts, then writes `Σ_j w_j · expert_j(x)` per token to `outHost`.
    /// With deferral: the first `topK - late` choices of this layer plus the deferred choices of the layer before;
    /// then the expert thread starts this layer's deferred choices, which run while the GPU goes on to the next
    /// layer (their sum is added there, or by `flush` after the last layer).
    fileprivate func finish(_ j: Job) {
        worker.waitIdle()
        let out = outHost!.bindMemory(to: Float.self, capacity: j.n * dim)
        out.update(repeating: 0, count: j.n * dim)
        guard j.late > 0 else {
            inner.wait(weights: Tensor(address: UInt(bitPattern: weightsHost!), count: j.n * j.topK, device: .cpu),
                       accumulateInto: Tensor(address: UInt(bitPattern: outHost!), count: j.n * dim, device: .cpu), n: j.n)
            return
        }
        let now = j.topK - j.late, d = deferral
        let w = weightsHost!.assumingMemoryBound(to: Float.self)
        for t in 0..<j.n {
            for c in 0..<now { d.nowWeights[t * now + c] = w[t * j.topK + c] }
            for c in 0..<j.late { d.lateWeights[t * j.late + c] = w[t * j.topK + now + c] }
        }
        inner.wait(weights: Tensor(address: UInt(bitPattern: d.nowWeights), count: j.n * now, device: .cpu),
                   accumulateInto: Tensor(address: UInt(bitPattern: outHost!), count: j.n * dim, device: .cpu), n: j.n)
        if d.pending {
            precondition(d.pendingTokens == j.n, "deferred experts of a \(d.pendingTokens)-token step met a \(j.n)-token one")
            for i in 0..<j.n * dim { out[i] += d.lateOut[i] }
        }
        // This layer's deferred choices, on their own copy of x (the next layer's staging overwrites xHost).
        d.lateX.update(from: xHost!.assumingMemoryBound(to: Float.self), count: j.n * dim)
        d.pending = true
        d.pendingTokens = j.n
        let inner = inner, late = j.late, rows = j.n * dim
        let lx = Tensor(address: UInt(bitPattern: d.lateX), count: j.n * dim, device: .cpu)
        let li = Tensor(address: UInt(bitPattern: d.lateIds), count: j.n * late, device: .cpu)
        let lw = Tensor(address: UInt(bitPattern: d.lateWeights), count: j.n * late, device: .cpu)
        let lo = Tensor(address: UInt(bitPattern: d.lateOut), count: j.n * dim, device: .cpu)
        worker.run {
            inner.submit(j.experts, x: lx, ids: li, n: j.n, topK: late)
            lo.hostFloats.update(repeating: 0, count: rows)
            inner.wait(weights: lw, accumulateInto: lo, n: j.n)
        }
    }

    /// Host function "flush": the last layer's deferred choices, once done, into `outHost` (zeros where none).
    fileprivate func flushHost(_ f: FlushJob) {
        worker.waitIdle()
        let out = outHost!.bindMemory(to: Float.self, capacity: f.n * dim)
        let d = deferral
        if d.pending {
            precondition(d.pendingTokens == f.n, "deferred experts of a \(d.pendingTokens)-token step flushed by a \(f.n)-token one")
            out.update(from: d.lateOut, count: f.n * dim)
        } else {
            out.update(repeating: 0, count: f.n * dim)
        }
        d.pending = false
    }

    // MARK: expert deferral

    /// Host buffers of expert deferral: the split choices and weights, the deferred part's own copy of x, its sum, and
    /// whether a layer's deferred sum waits to be added (host functions and the expert thread only, in stream order).
    final class Deferral {
        let nowIds: UnsafeMutablePointer<Int32>, lateIds: UnsafeMutablePointer<Int32>
        let nowWeights: UnsafeMutablePointer<Float>, lateWeights: UnsafeMutablePointer<Float>
        let lateX: UnsafeMutablePointer<Float>, lateOut: UnsafeMutablePointer<Float>
        var pending = false
        var pendingTokens = 0
        init(tokens: Int, topK: Int, dim: Int) {
            let a = max(1, tokens * topK), r = max(1, tokens * dim)
            nowIds = .allocate(capacity: a); lateIds = .allocate(capacity: a)
            nowWeights = .allocate(capacity: a); lateWeights = .allocate(capacity: a)
            lateX = .allocate(capacity: r); lateOut = .allocate(capacity: r)
        }
        func deallocate() {
            nowIds.deallocate(); lateIds.deallocate(); nowWeights.deallocate(); lateWeights.deallocate()
            lateX.deallocate(); lateOut.deallocate()
        }
    }
    private var deferral = Deferral(tokens: 0, topK: 0, dim: 0)

    /// What the flush host function needs (kept alive by `flushJobs`, as the graphs' host nodes point at it).
    final class FlushJob {
        unowned let owner: CUDAHybridExpertExecutor
        let n: Int
        init(owner: CUDAHybridExpertExecutor, n: Int) { self.owner = owner; self.n = n }
    }
    private var flushJobs: [Int: FlushJob] = [:]

    /// After the model's last layer: the deferred choices of the last hybrid layer added to `out` (the residual
    /// stream), in stream order. Nothing where deferral is off.
    func flush(accumulateInto out: Tensor, n: Int) {
        guard gpu.deferredExperts > 0, n > 0 else { return }
        let f = flushJobs[n] ?? FlushJob(owner: self, n: n)
        flushJobs[n] = f
        gpu.current()
        gpu.must("deferred experts (host to device)") {
            try gpu.driver.launchHostFunction(hybridExpertsFlush, data: Unmanaged.passUnretained(f).toOpaque(), stream: gpu.stream)
            try gpu.driver.copyAsync(toDevice: .init(outDevice.address), from: outHost!, bytes: n * dim * 4, stream: gpu.stream)
        }
        gpu.add(outDevice, into: out, count: n * dim)
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

private func hybridExpertsFlush(_ data: UnsafeMutableRawPointer?) {
    let f = Unmanaged<CUDAHybridExpertExecutor.FlushJob>.fromOpaque(data!).takeUnretainedValue()
    f.owner.flushHost(f)
}

/// One thread that runs the routed experts: handed over by the "start" host function (`run`), or, in mailbox mode,
/// taken from the mailbox word the GPU's stream writes (`HybridMailbox`). In mailbox mode it spins (pinned, as the
/// pool's thread 0) while steps come. The GPU cannot wake a sleeping thread, so it sleeps only when no mailbox job
/// can be pending: whoever queues GPU work that writes the mailbox calls `arm` first (waking it), and the thread may
/// sleep again only after a wait for the whole stream that began after the last `arm` has finished (`settle`), and
/// `spinWindow` passed without a job.
final class ExpertThread: @unchecked Sendable {
    // NOTE: @unchecked: `work` is handed over under `lock`; the mailbox and the flags are atomics.
    private let lock = NSCondition()
    private var work: (() -> Void)?
    private var busy = false
    private let hasWork = ManagedAtomic<Bool>(false)
    private let stopping = ManagedAtomic<Bool>(false)
    private let armEpoch = ManagedAtomic<Int>(0)
    private let settledEpoch = ManagedAtomic<Int>(0)
    private let armedAt = ManagedAtomic<UInt64>(0)
    private var sleeping = false
    private var thread: Thread?
    let mailbox: HybridMailbox?
    /// Runs the mailbox job with this index (on this thread).
    private let handler: (UInt32) -> Void
    /// How long the thread spins on the mailbox after its last job or arm before it sleeps.
    static let spinWindowNanoseconds: UInt64 = 50_000_000

    init(mailbox: HybridMailbox? = nil, handler: @escaping (UInt32) -> Void = { _ in }) {
        self.mailbox = mailbox
        self.handler = handler
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
        hasWork.store(true, ordering: .releasing)
        lock.broadcast()
        lock.unlock()
    }

    func waitIdle() {
        lock.lock()
        while busy { lock.wait() }
        lock.unlock()
    }

    /// Mailbox mode: GPU work that writes the mailbox is about to be queued; spin from now on (wake if asleep).
    func arm() {
        guard mailbox != nil else { return }
        armedAt.store(DispatchTime.now().uptimeNanoseconds, ordering: .releasing)
        armEpoch.wrappingIncrement(ordering: .sequentiallyConsistent)
        lock.lock()
        if sleeping { lock.broadcast() }
        lock.unlock()
    }

    /// Before a wait for the whole stream: the arms so far (for `settle`).
    func settleMark() -> Int { armEpoch.load(ordering: .sequentiallyConsistent) }

    /// After that wait: every mailbox job queued before arm number `mark` is done.
    func settle(_ mark: Int) {
        var cur = settledEpoch.load(ordering: .relaxed)
        while mark > cur {
            let (done, now) = settledEpoch.compareExchange(expected: cur, desired: mark, ordering: .sequentiallyConsistent)
            if done { break }
            cur = now
        }
    }

    var isStopping: Bool { stopping.load(ordering: .relaxed) }

    /// Ends the loop and waits for it to end (the mailbox's memory may be freed after this returns).
    func stop() {
        stopping.store(true, ordering: .sequentiallyConsistent)
        lock.lock()
        lock.broadcast()
        lock.unlock()
        exited.wait()
    }
    private let exited = DispatchSemaphore(value: 0)

    private func loop() {
        defer { exited.signal() }
        // Thread 0 of the expert pool, whose workers are pinned to the other cores: core 0 is this one's.
        ThreadPool.pinCurrentThread(toCore: 0)
        var lastJob = DispatchTime.now().uptimeNanoseconds
        var spins = 0
        while true {
            if let m = mailbox {
                let j = m.start.load(ordering: .acquiring)
                if j != 0 {
                    m.start.store(0, ordering: .relaxed)
                    handler(j)
                    lastJob = DispatchTime.now().uptimeNanoseconds
                    continue
                }
            }
            if hasWork.load(ordering: .acquiring) || stopping.load(ordering: .relaxed) || mailbox == nil {
                lock.lock()
                if let w = work {
                    work = nil
                    hasWork.store(false, ordering: .relaxed)
                    lock.unlock()
                    w()
                    lock.lock()
                    busy = false
                    lock.broadcast()
                    lock.unlock()
                    lastJob = DispatchTime.now().uptimeNanoseconds
                    continue
                }
                if stopping.load(ordering: .relaxed) { lock.unlock(); return }
                if mailbox == nil {
                    while work == nil && !stopping.load(ordering: .relaxed) { lock.wait() }
                    lock.unlock()
                    continue
                }
                lock.unlock()
            }
            spins += 1
            guard spins & 1023 == 0 else { continue }
            // Every ~1000 polls: sleep once no job can be pending (every arm settled) and none came within the window.
            let e = armEpoch.load(ordering: .sequentiallyConsistent)
            guard settledEpoch.load(ordering: .sequentiallyConsistent) == e else { continue }
            let now = DispatchTime.now().uptimeNanoseconds
            let since = max(lastJob, armedAt.load(ordering: .acquiring))
            guard now > since &+ Self.spinWindowNanoseconds else { continue }
            lock.lock()
            sleeping = true
            while work == nil && !stopping.load(ordering: .relaxed) && armEpoch.load(ordering: .sequentiallyConsistent) == e
                    && mailbox?.start.load(ordering: .acquiring) == 0 {
                lock.wait()
            }
            sleeping = false
            lock.unlock()
            lastJob = DispatchTime.now().uptimeNanoseconds
        }
    }
}

/// Three 32-bit words in page-locked host memory, one cache line each, through which the GPU's stream and the
/// expert thread hand a layer's routed experts over without host functions: the stream writes `start` = the job's
/// index once x and the expert ids are staged, `weightsReady` = the index once the routing weights are; the expert
/// thread clears each as it takes it and writes `done` = the index once the combined output is staged; the stream
/// waits for `done` to equal the index, then clears it.
final class HybridMailbox: @unchecked Sendable {
    // NOTE: @unchecked: the words are atomics over page-locked memory the GPU also writes.
    let host: UnsafeMutableRawPointer
    let device: CUDADriver.CUdeviceptr
    let start: UnsafeAtomic<UInt32>
    let weightsReady: UnsafeAtomic<UInt32>
    let done: UnsafeAtomic<UInt32>
    static let bytes = 192

    init(host: UnsafeMutableRawPointer, device: CUDADriver.CUdeviceptr) {
        self.host = host
        self.device = device
        host.initializeMemory(as: UInt8.self, repeating: 0, count: Self.bytes)
        func word(_ offset: Int) -> UnsafeAtomic<UInt32> {
            UnsafeAtomic(at: (host + offset).bindMemory(to: UInt32.AtomicRepresentation.self, capacity: 1))
        }
        start = word(0)
        weightsReady = word(64)
        done = word(128)
    }
    var startAddress: CUDADriver.CUdeviceptr { device }
    var weightsReadyAddress: CUDADriver.CUdeviceptr { device + 64 }
    var doneAddress: CUDADriver.CUdeviceptr { device + 128 }
}
