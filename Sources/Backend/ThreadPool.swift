#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Atomics

/// A persistent pool of worker threads for data-parallel loops.
///
/// A decode step runs hundreds of parallel regions, so the cost of one region matters: workers spin on an
/// atomic generation counter for a short while after each region and only then sleep on a condition variable.
/// The calling thread takes part as thread 0. Tasks are handed out dynamically from an atomic counter.
public final class ThreadPool: @unchecked Sendable {
    public let threadCount: Int

    // NOTE: `body` and `taskCount` are written by the caller before the generation bump (release) and read by
    // workers after they observe it (acquire), so plain stored properties are safe here.
    private var body: ((_ task: Int, _ thread: Int) -> Void)?
    private var taskCount = 0
    private let generation = ManagedAtomic<Int>(0)
    private let nextTask = ManagedAtomic<Int>(0)
    private let running = ManagedAtomic<Int>(0)
    private let sleepers = ManagedAtomic<Int>(0)
    private let stopping = ManagedAtomic<Bool>(false)
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var workers: [pthread_t] = []
    private let spinLimit = 20_000

    /// - Parameter threads: total threads including the caller (at least 1).
    public init(threads: Int) {
        threadCount = max(1, threads)
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
        for i in 1..<threadCount {
            let ctx = Unmanaged.passRetained(WorkerContext(pool: self, index: i)).toOpaque()
            var t = pthread_t()
            let rc = pthread_create(&t, nil, { raw in
                let ctx = Unmanaged<WorkerContext>.fromOpaque(raw!).takeRetainedValue()
                ctx.pool.workerLoop(ctx.index)
                return nil
            }, ctx)
            precondition(rc == 0, "pthread_create failed: \(rc)")
            workers.append(t)
        }
    }

    private final class WorkerContext {
        unowned let pool: ThreadPool
        let index: Int
        init(pool: ThreadPool, index: Int) { self.pool = pool; self.index = index }
    }

    /// Stops the workers. Called automatically on deinit when no longer referenced... but workers hold
    /// `unowned` references, so call `shutdown()` explicitly when the pool is dropped before process exit.
    public func shutdown() {
        guard !stopping.exchange(true, ordering: .sequentiallyConsistent) else { return }
        pthread_mutex_lock(&mutex)
        generation.wrappingIncrement(ordering: .releasing)
        pthread_cond_broadcast(&cond)
        pthread_mutex_unlock(&mutex)
        for t in workers { pthread_join(t, nil) }
        workers.removeAll()
    }

    deinit {
        shutdown()
        pthread_cond_destroy(&cond)
        pthread_mutex_destroy(&mutex)
    }

    /// Runs `body(task, thread)` for every task in `0..<tasks`, spread over the pool; returns when all are done.
    /// `thread` is in `0..<threadCount` and identifies per-thread scratch space.
    public func parallelFor(_ tasks: Int, _ body: (_ task: Int, _ thread: Int) -> Void) {
        if tasks <= 0 { return }
        if threadCount == 1 || tasks == 1 {
            for t in 0..<tasks { body(t, 0) }
            return
        }
        withoutActuallyEscaping(body) { b in
            self.body = b
            self.taskCount = tasks
            nextTask.store(0, ordering: .relaxed)
            running.store(threadCount - 1, ordering: .relaxed)
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
            while running.load(ordering: .acquiring) > 0 {
                spins += 1
                if spins > spinLimit { sched_yield() }
            }
            self.body = nil
        }
    }

    private func runTasks(thread: Int) {
        let n = taskCount
        let b = body!
        while true {
            let t = nextTask.loadThenWrappingIncrement(ordering: .relaxed)
            if t >= n { break }
            b(t, thread)
        }
    }

    private func workerLoop(_ index: Int) {
        var seen = 0
        while true {
            var spins = 0
            var g = generation.load(ordering: .acquiring)
            while g == seen {
                spins += 1
                if spins > spinLimit {
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
