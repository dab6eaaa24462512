import Backend
import BackendCUDA

extension BackendConformance {
    /// The backends under test: a name and a factory that makes a fresh instance, or nil when the backend is not
    /// available on this machine (its checks are then skipped with a note); it throws when the backend should
    /// work here but does not (a GPU whose kernels fail to compile). A new backend plugs in with ONE line here.
    public static let backends: [(name: String, make: @Sendable () throws -> (any ComputeBackend)?)] = [
        ("cpu", { CPUBackend(threads: 2) }),
        ("cuda", { try CUDABackend.makeIfPresent() }),
        // The same GPU on its exact kernels only (`--batch-invariant`): batches checked against rows alone bit for bit.
        ("cuda, batch-invariant", { try CUDABackend.makeIfPresent().map { b in b.batchInvariant = true; return b } }),
    ]

    /// Runs `body` with the backends' opt-in fused kernels on (CUDA's `attention_decode`,
    /// `KTRANSFORMERS_CUDA_ATTENTION_FUSED=1`), for the checks that prove their bits against the separate ops; the
    /// switches are set back after.
    static func withOptInFusions(_ body: () throws -> Void) rethrows {
        let saved = CUDABackend.fusedDecodeAttention
        CUDABackend.fusedDecodeAttention = true
        defer { CUDABackend.fusedDecodeAttention = saved }
        try body()
    }

    /// Every check, by name, in the order they run.
    public static let checks: [(name: String, run: @Sendable (BackendConformance) throws -> Void)] = [
        ("memory", { $0.checkMemory() }),
        ("embed", { try $0.checkEmbed() }),
        ("rmsNorm", { $0.checkRMSNorm() }),
        ("matmul", { try $0.checkMatmul() }),
        ("matmulGroup", { try $0.checkMatmulGroup() }),
        ("matmulPrefill", { try $0.checkMatmulPrefill() }),
        ("chainedOps", { try $0.checkChainedOps() }),
        ("matmulHeads", { try $0.checkMatmulHeads() }),
        ("elementwise", { $0.checkElementwise() }),
        ("rope", { $0.checkRoPE() }),
        ("ropeAndStoreKV", { $0.checkRopeAndStoreKV() }),
        ("addRMSNorm", { try $0.checkAddRMSNorm() }),
        ("ropeStoreAndAttend", { c in try withOptInFusions { try c.checkRopeStoreAndAttend() } }),
        ("attention", { $0.checkAttention() }),
        ("attentionPrefill", { $0.checkAttentionPrefill() }),
        ("moeSelect", { $0.checkMoESelect() }),
        ("argmaxRows", { $0.checkArgmaxRows() }),
        ("expertExecutor", { try $0.checkExpertExecutor() }),
        ("stagedExpertExecutor", { try $0.checkStagedExpertExecutor() }),
    ]
}
