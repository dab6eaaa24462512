#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Atomics
import CSIMD
import Foundation

/// A persistent pool of worker threads for data-parallel loops.
///
/// A decode step runs hundreds of parallel regions, so the cost of one region matters: workers spin on an
/// atomic generation counter for a short while after each region and only then sleep on a condition variable.
/// The calling thread takes part as thread 0. Tasks are handed out dynamically from an atomic counter.
/// Dropping the pool stops and joins its workers.
public final class ThreadPool: @unchecked Sendable {
    public let threadCount: Int
    private let state: PoolState
    private var workers: [pthread_t] = []

    /// Whether the workers are pinned to cores (`ThreadPool.pinning`).
    public private(set) var pinned = false

    /// Pin worker i to the i-th physical core (`CPUInfo.coreCPUs`) when the pool has no more threads than there
    /// are cores: spinning workers then stay on their core and its caches. `KTRANSFORMERS_PIN_THREADS=0` turns it
    /// off. The calling thread (thread 0) is not pinned: it belongs to the caller.
    public static let pinning: Bool = ProcessInfo.processInfo.environment["KTRANSFORMERS_PIN_THREADS"] != "0"

    /// Spins of an idle worker (on the next region's generation counter) before it sleeps; a sleeping worker
    /// costs the next region a wake-up (tens of µs for a pool). The default suits back-to-back regions; the hybrid
    /// MoE, whose regions come one per layer with the GPU's part of the layer between them, spins longer.
    /// `KTRANSFORMERS_POOL_SPINS` overrides both.
    public var idleSpins: Int {
        get { state.spinLimit.load(ordering: .relaxed) }
        set { state.spinLimit.store(ThreadPool.spinOverride ?? max(0, newValue), ordering: .relaxed) }
    }
    public static let defaultIdleSpins = 20_000
    static let spinOverride: Int? = ProcessInfo.processInfo.environment["KTRANSFORMERS_POOL_SPINS"].flatMap { Int($0) }

    /// Pins the calling thread to the i-th physical core (`CPUInfo.coreCPUs`), when pinning is on: a thread that
    /// drives a pinned pool as its thread 0 (the hybrid MoE's expert thread) takes the core the workers leave free.
    @discardableResult
    public static func pinCurrentThread(toCore i: Int) -> Bool {
        let cores = CPUInfo.coreCPUs
        guard pinning, i >= 0, i < cores.count else { return false }
        return csimd_pin_thread(UInt(pthread_self()), Int32(cores[i])) == 0
    }

    /// - Parameter threads: total threads including the caller (at least 1).
    public init(threads: Int) {
        threadCount = max(1, threads)
        state = PoolState(workerCount: threadCount - 1)
        state.spinLimit.store(ThreadPool.spinOverride ?? ThreadPool.defaultIdleSpins, ordering: .relaxed)
        let cores = CPUInfo.coreCPUs
        let pin = ThreadPool.pinning && threadCount > 1 && threadCount <= cores.count
        for i in 1..<threadCount {
            // Each worker owns a strong reference to the shared state, never to the pool itself.
            let ctx = Unmanaged.passRetained(WorkerContext(state: state, index: i)).toOpaque()
            var t = pthread_t()
            let rc = pthread_create(&t, nil, { raw in
                let ctx = Unmanaged<WorkerContext>.fromOpaque(raw!).takeRetainedValue()
                ctx.state.workerLoop(ctx.index)
                return nil
            }, ctx)
            precondition(rc == 0, "pthread_create failed: \(rc)")
            workers.append(t)
            if pin && csimd_pin_thread(UInt(t), Int32(cores[i])) == 0 { pinned = true }
        }
    }

    deinit {
        state.stop()
        for t in workers { pthread_join(t, nil) }
    }

    /// Runs `body(task, thread)` for every task in `0..<tasks`, spread over the pool; returns when all are done.
    /// `thread` is in `0..<threadCount` and identifies per-thread scratch space.
    public func parallelFor(_ tasks: Int, _ body: (_ task: Int, _ thread: Int) -> Void) {
        if tasks <= 0 { return }
        if threadCount == 1 || tasks == 1 {
            for t in 0..<tasks { body(t, 0) }
            return
        }
        withoutActuallyEscaping(body) { state.run(tasks: tasks, body: $0) }
    }
}

private final class WorkerContext {
    let state: PoolState
    let index: Int
    init(state: PoolState, index: Int) { self.state = state; self.index = index }
}

/// What the caller and the workers share.
private final class PoolState: @unchecked Sendable {
    // NOTE: `body` and `taskCount` are written by the caller before the generation bump and read by workers
    // after they observe it, so plain stored properties are safe here.
    var body: ((_ task: Int, _ thread: Int) -> Void)?
    var taskCount = 0
    let workerCount: Int
    let generation = ManagedAtomic<Int>(0)
    let nextTask = ManagedAtomic<Int>(0)
    let running = ManagedAtomic<Int>(0)
    let sleepers = ManagedAtomic<Int>(0)
    let stopping = ManagedAtomic<Bool>(false)
    var mutex = pthread_mutex_t()
    var cond = pthread_cond_t()
    let spinLimit = ManagedAtomic<Int>(0)

    init(workerCount: Int) {
        self.workerCount = workerCount
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
    }

    deinit {
        pthread_cond_destroy(&cond)
        pthread_mutex_destroy(&mutex)
    }

    func stop() {
        stopping.store(true, ordering: .sequentiallyConsistent)
        pthread_mutex_lock(&mutex)
        generation.wrappingIncrement(ordering: .sequentiallyConsistent)
        pthread_cond_broadcast(&cond)
        pthread_mutex_unlock(&mutex)
    }

    func run(tasks: Int, body: @escaping (_ task: Int, _ thread: Int) -> Void) {
        self.body = body
        taskCount = tasks
        nextTask.store(0, ordering: .relaxed)
        running.store(workerCount, ordering: .relaxed)
        // NOTE: seq-cst on both sides (here and the worker's sleepers/generation pair) so a worker going to
        // sleep either sees the new generation or is seen as a sleeper and woken.
        generation.wrappingIncrement(ordering: .sequentiallyConsistent)
        if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
            pthread_mutex_lock(&mutex)
            pthread_cond_broadcast(&cond)
            pthread_mutex_unlock(&mutex)
        }
        runTasks(thread: 0)
        var spins = 0
        let limit = spinLimit.load(ordering: .relaxed)
        while running.load(ordering: .acquiring) > 0 {
            spins += 1
            if spins > limit { sched_yield() }
        }
        self.body = nil
    }

    func runTasks(thread: Int) {
        let n = taskCount
        let b = body!
        while true {
            let t = nextTask.loadThenWrappingIncrement(ordering: .relaxed)
            if t >= n { break }
            b(t, thread)
        }
    }

    func workerLoop(_ index: Int) {
        var seen = 0
        while true {
            var spins = 0
            let limit = spinLimit.load(ordering: .relaxed)
            var g = generation.load(ordering: .acquiring)
            while g == seen {
                spins += 1
                if spins > limit {
                    pthread_mutex_lock(&mutex)
                    sleepers.wrappingIncrement(ordering: .sequentiallyConsistent)
                    while generation.load(ordering: .sequentiallyConsistent) == seen {
                        pthread_cond_wait(&cond, &mutex)
                    }
                    sleepers.wrappingDecrement(ordering: .sequentiallyConsistent)
                    pthread_mutex_unlock(&mutex)
                    spins = 0
                }
                g = generation.load(ordering: .acquiring)
            }
            seen = g
            if stopping.load(ordering: .acquiring) { return }
            runTasks(thread: index)
            running.wrappingDecrement(ordering: .releasing)
        }
    }
}
