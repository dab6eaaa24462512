import Quant

/// The compute seam: model code says *what* to compute (which weights, in which order, with which
/// hyper-parameters); a backend says *how and where*. Every op works on `Tensor` handles in the backend's own
/// memory and on weights the backend prepared (`prepare`), so a model written against this protocol runs
/// unchanged on any backend. Ops are coarse (a few hundred per step), so dispatching through the protocol costs
/// nothing measurable.
///
/// Memory rules: everything a forward pass touches is allocated before it (`allocate`, `makeKVCache`,
/// `reserve`); the ops themselves allocate nothing, and buffer addresses stay fixed from one step to the next
/// (which CUDA graph capture needs). A backend runs one forward pass at a time.
///
/// Shapes: `// [n, width]` means `n` rows of `width` elements, row-major. Ops that work on part of a row take a
/// row stride; all others take packed rows.
public protocol ComputeBackend: AnyObject, Sendable {
    /// Where this backend's tensors live.
    var device: Device { get }
    /// A short description for logs (`cpu (16 threads, avx512)`).
    var summary: String { get }

    // MARK: memory

    /// `count` zeroed 4-byte elements that live as long as the backend.
    func allocate(_ count: Int) -> Tensor
    /// Frees a tensor `allocate` or `upload` returned (load time: a run state replaced by a larger one).
    func release(_ t: Tensor)
    /// A constant (norm weight, bias) copied into the backend's memory.
    func upload(_ values: [Float]) -> Tensor
    /// Copies host values into the front of `t` (per-step metadata into its fixed tensors).
    func write(_ values: UnsafeBufferPointer<Int32>, to t: Tensor)
    func write(_ values: UnsafeBufferPointer<Float>, to t: Tensor)
    /// The first `count` floats of `t` as host memory: in place on the CPU, a staging copy (valid until the next
    /// `read`) on a device. The caller may modify them (the sampler applies penalties in place).
    func read(_ t: Tensor, count: Int) -> UnsafeMutablePointer<Float>
    /// A paged K/V pool in this backend's memory.
    func makeKVCache(pageSize: Int, numPages: Int, kDims: [Int], vDims: [Int]) -> KVCache
    /// `rope`'s cos/sin for positions `0..<positions`, computed once.
    func makeRopeTable(_ rope: RoPE, positions: Int) -> RopeTable

    // MARK: weights

    /// Turns a weight described by the loader (`[rows, cols]`, ggml shape `[cols, rows]`) into this backend's
    /// form. Throws `BackendError` naming the tensor when the backend cannot run its type or layout.
    func prepare(_ w: WeightRef) throws -> WeightMatrix
    /// The same for `count` stacked matrices (ggml shape `[cols, rows, count]`): MoE experts, MLA heads.
    func prepareStack(_ w: WeightRef) throws -> WeightStack
    /// Runs the routed experts of the MoE layers whose expert weights this backend prepared.
    func makeExpertExecutor(nExpert: Int, dim: Int, ff: Int) -> any ExpertExecutor
    /// An executor for routed experts that another device holds (`inner` is that device's executor): it moves the
    /// activations, choices and weights from this backend's memory to `innerDevice`'s and the result back, in this
    /// backend's order (and inside its captured graphs). nil: this backend cannot stage to that device.
    func makeStagedExpertExecutor(_ inner: any ExpertExecutor, innerDevice: Device, dim: Int) -> (any ExpertExecutor)?
    /// Sizes every internal scratch buffer for the largest step in `plan` (load time; grows only).
    func reserve(_ plan: ForwardPlan)

    // MARK: ops

    /// `out[t] = scale · table[tokens[t]]` for `n` tokens: `out` `// [n, table.cols]`.
    func embed(_ table: WeightMatrix, tokens: Tensor, n: Int, out: Tensor, scale: Float)
    /// RMS norm of `rows` rows of `dim` elements at row stride `stride` (in place when out == x):
    /// `out = x / rms(x) · weight`.
    func rmsNorm(_ x: Tensor, weight: Tensor, out: Tensor, rows: Int, dim: Int, stride: Int, eps: Float)
    /// Norm of the rows `x[indices[i]]` for i < count, gathered into `out` `// [count, dim]` (the final norm of
    /// the rows whose logits are wanted).
    func rmsNormRows(_ x: Tensor, indices: Tensor, count: Int, weight: Tensor, out: Tensor, dim: Int, eps: Float)
    /// `y[t] = W · x[t]` for `n` rows: `x` `// [n, W.cols]`, `y` `// [n, W.rows]`.
    func matmul(_ w: WeightMatrix, _ x: Tensor, _ y: Tensor, n: Int, precision: MatmulPrecision)
    /// Two or three matmuls of the same input (Q/K/V, gate/up), each output as `matmul` gives it.
    func matmulGroup(_ w0: WeightMatrix, _ y0: Tensor, _ w1: WeightMatrix, _ y1: Tensor, _ w2: WeightMatrix?,
                     _ y2: Tensor?, x: Tensor, n: Int)
    /// One matrix per head on that head's slice of each row (MLA's absorbed `k_b` / `v_b`):
    /// `y[t, h·yHeadStride + r] = W_h[r] · x[t, h·xHeadStride ..< + W.cols]`, f32 activations.
    func matmulHeads(_ w: WeightStack, _ x: Tensor, xStride: Int, xHeadStride: Int, _ y: Tensor, yStride: Int,
                     yHeadStride: Int, n: Int)
    /// `x[t] += bias` for `rows` rows of `bias.count`.
    func addBias(_ bias: Tensor, to x: Tensor, rows: Int)
    /// Rotates `heads` vectors of each of `rows` rows in place (`x[t] + h·headStride`, the first `table.dims`
    /// elements of each) by the position `positions[t]`, after an RMS norm of each head vector (`headStride`
    /// elements) by `norm` when given (per-head Q/K norm).
    func rope(_ x: Tensor, rows: Int, rowStride: Int, heads: Int, headStride: Int, table: RopeTable,
              positions: Tensor, norm: Tensor?, eps: Float)
    /// Writes the `n` rows of `k` `// [n, kDim]` and `v` `// [n, vDim]` into layer `layer` at `meta.slotMapping`.
    func storeKV(k: Tensor, v: Tensor, n: Int, cache: KVCache, layer: Int, meta: BatchMetadata)
    /// The attention prologue in one call: `rope` of `q` `// [n, qHeads·headDim]` and of `k`
    /// `// [n, kHeads·headDim]` (packed rows, per-head norms when given), then `storeKV(k, v)`, with the bits of
    /// those three calls (a backend may do it in one pass; the default makes the three calls).
    func ropeAndStoreKV(q: Tensor, qHeads: Int, qNorm: Tensor?, k: Tensor, kHeads: Int, kNorm: Tensor?, v: Tensor,
                        headDim: Int, n: Int, table: RopeTable, eps: Float, cache: KVCache, layer: Int,
                        meta: BatchMetadata)
    /// A layer's attention from its projections: `ropeAndStoreKV` (q heads `params.nHead`, k heads `params.nKVHead`,
    /// `params.headDim`), then `attention` of the rotated `q` into `out`, with the output and cached K/V of those two
    /// calls (a backend may do both in one pass where `meta.oneTokenPerSequence`, leaving `q` and `k` as they came;
    /// the default makes the two calls).
    func ropeStoreAndAttend(q: Tensor, qNorm: Tensor?, k: Tensor, kNorm: Tensor?, v: Tensor, out: Tensor, n: Int,
                            table: RopeTable, eps: Float, cache: KVCache, layer: Int, meta: BatchMetadata,
                            params: AttentionParams)
    /// Causal paged attention of `n` query rows `q` `// [n, nHead·headDim]` over their sequences' cached K/V
    /// (which already hold this batch's own), into `out` `// [n, nHead·headDimV]`.
    func attention(q: Tensor, out: Tensor, n: Int, cache: KVCache, layer: Int, meta: BatchMetadata,
                   params: AttentionParams)
    /// `g[i] = act(g[i]) · u[i]` over `count` elements.
    func gatedActivation(_ g: Tensor, _ u: Tensor, count: Int, _ kind: GatedActivation)
    /// `y += x` over `count` elements.
    func add(_ x: Tensor, into y: Tensor, count: Int)
    /// The residual step in one call: `y += x` over `rows` packed rows of `dim`, then `out = rmsNorm(y)` with
    /// `weight`, with the bits of `add` and `rmsNorm` (a backend may do both in one pass; the default makes the two
    /// calls).
    func addRMSNorm(_ x: Tensor, into y: Tensor, weight: Tensor, out: Tensor, rows: Int, dim: Int, eps: Float)
    /// Copies `rows` rows of `width` elements between strided views.
    func copyRows(_ src: Tensor, srcStride: Int, _ dst: Tensor, dstStride: Int, rows: Int, width: Int)
    /// Sets `count` elements to `value`.
    func fill(_ x: Tensor, count: Int, value: Float)
    /// Router: chooses `routing.topK` experts per row of `logits` `// [n, nExpert]` into `experts` (i32) and
    /// `weights` (`// [n, topK]` each, best first).
    func moeSelect(logits: Tensor, nExpert: Int, routing: MoERouting, experts: Tensor, weights: Tensor, n: Int)
    /// `out[t] *= sigmoid(gate · x[t])` for `n` rows of `width` (Qwen2-MoE's shared-expert gate).
    func sigmoidGate(_ out: Tensor, gate: Tensor, x: Tensor, width: Int, n: Int)
    /// `x = cap · tanh(x / cap)` over `count` elements (final logit soft-capping).
    func softcap(_ x: Tensor, count: Int, cap: Float)
    /// For each of `rows` rows of `cols` values, `firstArgmax` of the row into `out` (i32): the host sampler's greedy
    /// choice, so that greedy decoding reads one int a sequence instead of its logits.
    func argmaxRows(_ x: Tensor, rows: Int, cols: Int, out: Tensor)

    /// Whether every row of an op has the bits it has alone, whatever else the call holds (the number of tokens
    /// included): true on the CPU; a GPU backend may trade it for speed (one-token decode steps, prefill GEMMs)
    /// unless asked to keep it (`--batch-invariant`). The conformance suite compares batches with rows alone bit
    /// for bit only where it is true, and within the op's error bound otherwise.
    var batchInvariant: Bool { get }

    // MARK: graphs (default: none)

    /// Whether `captureGraph` records graphs (false: the CPU, or graphs turned off).
    var capturesGraphs: Bool { get }
    /// Changes whenever the backend moves internal memory that captured graphs refer to (its scratch): graphs
    /// captured under another epoch must be captured again.
    var graphEpoch: Int { get }
    /// Records the ops `body` issues as a graph to replay with `launch`, without running them; nil when this
    /// backend has no graphs (the CPU) or they are turned off, and then `body` has not run. Everything `body`
    /// touches (tensors, metadata, the op parameters) must stay as it is for every replay: only the contents of
    /// tensors may change between replays.
    func captureGraph(_ body: () throws -> Void) throws -> (any ComputeGraph)?
    /// What a step's launches depend on besides its token count, from the largest position of its tokens (a GPU
    /// backend's attention launches only the key splits those positions reach): one graph is captured per value.
    /// Default 0 (no dependence).
    func attentionLaunchShape(maxPosition: Int) -> Int
    /// Replays a graph `captureGraph` returned.
    func launch(_ graph: any ComputeGraph)
}

/// A recorded sequence of ops a backend can replay as one unit (a CUDA graph).
public protocol ComputeGraph: AnyObject, Sendable {}

extension ComputeBackend {
    public var batchInvariant: Bool { true }

    public func ropeAndStoreKV(q: Tensor, qHeads: Int, qNorm: Tensor?, k: Tensor, kHeads: Int, kNorm: Tensor?, v: Tensor,
                               headDim: Int, n: Int, table: RopeTable, eps: Float, cache: KVCache, layer: Int,
                               meta: BatchMetadata) {
        rope(q, rows: n, rowStride: qHeads * headDim, heads: qHeads, headStride: headDim, table: table,
             positions: meta.positions, norm: qNorm, eps: eps)
        rope(k, rows: n, rowStride: kHeads * headDim, heads: kHeads, headStride: headDim, table: table,
             positions: meta.positions, norm: kNorm, eps: eps)
        storeKV(k: k, v: v, n: n, cache: cache, layer: layer, meta: meta)
    }

    public func ropeStoreAndAttend(q: Tensor, qNorm: Tensor?, k: Tensor, kNorm: Tensor?, v: Tensor, out: Tensor, n: Int,
                                   table: RopeTable, eps: Float, cache: KVCache, layer: Int, meta: BatchMetadata,
                                   params: AttentionParams) {
        ropeAndStoreKV(q: q, qHeads: params.nHead, qNorm: qNorm, k: k, kHeads: params.nKVHead, kNorm: kNorm, v: v,
                       headDim: params.headDim, n: n, table: table, eps: eps, cache: cache, layer: layer, meta: meta)
        attention(q: q, out: out, n: n, cache: cache, layer: layer, meta: meta, params: params)
    }

    public func addRMSNorm(_ x: Tensor, into y: Tensor, weight: Tensor, out: Tensor, rows: Int, dim: Int, eps: Float) {
        add(x, into: y, count: rows * dim)
        rmsNorm(y, weight: weight, out: out, rows: rows, dim: dim, stride: dim, eps: eps)
    }

    public var capturesGraphs: Bool { false }
    public var graphEpoch: Int { 0 }
    public func attentionLaunchShape(maxPosition: Int) -> Int { 0 }

    public func captureGraph(_ body: () throws -> Void) throws -> (any ComputeGraph)? { nil }

    public func launch(_ graph: any ComputeGraph) {
        preconditionFailure("\(summary) has no graphs")
    }

    public func makeStagedExpertExecutor(_ inner: any ExpertExecutor, innerDevice: Device, dim: Int) -> (any ExpertExecutor)? {
        nil
    }
}

/// How a matmul treats its activations.
public enum MatmulPrecision: Sendable {
    /// Quantized to the weight format's `vecDotType` (8-bit) where the weights are quantized.
    case standard
    /// Kept in f32 (heavy-tailed inputs: the MLP's down projection, the MoE router). A backend that is not
    /// batch-invariant may round them to 16-bit integers per 256-block instead (~1e-9 NMSE, against 8-bit's ~1e-4).
    case f32Activations
}

public enum GatedActivation: Sendable {
    /// SwiGLU (Llama, Qwen, DeepSeek).
    case silu
    /// GeGLU with tanh-GELU (Gemma).
    case gelu
}

/// One RoPE's cos/sin pairs for every position up to the run's context length, in a backend's memory:
/// `// [positions, dims]` (`dims / 2` pairs per position).
public struct RopeTable: Sendable {
    public let rope: RoPE
    public let table: Tensor
    public let positions: Int
    public var dims: Int { rope.dims }

    public init(rope: RoPE, table: Tensor, positions: Int) {
        self.rope = rope
        self.table = table
        self.positions = positions
    }
}

/// Where each token of one step lives in the paged KV pool, as i32 tensors in the backend's memory. The tensors
/// have fixed addresses (sized at load); the counts are this step's.
public struct BatchMetadata: Sendable {
    /// Tokens in the step.
    public var tokens: Int
    /// `// [tokens]` absolute position of each token in its sequence.
    public var positions: Tensor
    /// `// [tokens]` KV slot each token's K/V is written to.
    public var slotMapping: Tensor
    /// `// [tokens]` index of each token's sequence in `blockTables`.
    public var sequenceOfToken: Tensor
    /// `// [nSequences, blockTableStride]` physical page of each logical page.
    public var blockTables: Tensor
    public var blockTableStride: Int
    public var pageSize: Int
    /// Every token is the only one of its sequence in the step (a decode step): a token's attention then reads no
    /// other token's K/V of this step, so a backend may store and attend in one pass (`ropeStoreAndAttend`).
    public var oneTokenPerSequence: Bool
    /// The largest position of the step's tokens, when the caller knows it (nil: any up to the reserved context).
    /// A backend may shape its attention launches by it (`attentionLaunchShape`), never its results.
    public var maxPosition: Int?

    public init(tokens: Int, positions: Tensor, slotMapping: Tensor, sequenceOfToken: Tensor, blockTables: Tensor,
                blockTableStride: Int, pageSize: Int, oneTokenPerSequence: Bool = false, maxPosition: Int? = nil) {
        self.tokens = tokens
        self.maxPosition = maxPosition
        self.oneTokenPerSequence = oneTokenPerSequence
        self.positions = positions
        self.slotMapping = slotMapping
        self.sequenceOfToken = sequenceOfToken
        self.blockTables = blockTables
        self.blockTableStride = blockTableStride
        self.pageSize = pageSize
    }
}

/// The largest step a backend must be ready for: sizes its scratch once, at load.
public struct ForwardPlan: Sendable, Equatable {
    /// Tokens in one step (the engine's chunk size).
    public var maxTokens: Int
    /// Positions a token can attend over.
    public var contextLength: Int
    /// Query heads per cached K/V head, the most of any layer (MLA: all heads share one latent).
    public var maxQueryGroup: Int
    /// Work floats of the widest MoE router (`MoERouting.workFloats`); 0 without MoE layers.
    public var routerWork: Int

    public init(maxTokens: Int, contextLength: Int, maxQueryGroup: Int, routerWork: Int = 0) {
        self.maxTokens = maxTokens
        self.contextLength = contextLength
        self.maxQueryGroup = maxQueryGroup
        self.routerWork = routerWork
    }
}

/// The three expert stacks of one MoE layer.
public struct ExpertWeights: Sendable {
    public let gate: WeightStack   // [nExpert][ff, dim]  ffn_gate_exps
    public let up: WeightStack     // [nExpert][ff, dim]  ffn_up_exps
    public let down: WeightStack   // [nExpert][dim, ff]  ffn_down_exps

    public init(gate: WeightStack, up: WeightStack, down: WeightStack) {
        self.gate = gate
        self.up = up
        self.down = down
    }
}

/// Runs the routed experts of MoE layers: `submit` starts them, `wait` finishes them and adds each token's
/// weighted expert outputs to `out`. Between the two the caller may run other work (the shared experts), which
/// is where a hybrid backend overlaps GPU work with the CPU threads that run the experts.
///
/// The tensors are in the memory of the backend that runs the rest of the model; an executor on another device
/// stages them itself. One layer at a time: every `submit` is followed by its `wait`.
public protocol ExpertExecutor: AnyObject {
    /// Sizes the executor's buffers for steps of up to `maxTokens` tokens with `topK` experts each (load time).
    func reserve(maxTokens: Int, topK: Int)
    /// Starts `down_e(silu(gate_e(x[t])) · up_e(x[t]))` for every token t < n and each of its experts
    /// `e = ids[t, j]`, j < topK: `x` `// [n, dim]`, `ids` i32 `// [n, topK]`.
    func submit(_ experts: ExpertWeights, x: Tensor, ids: Tensor, n: Int, topK: Int)
    /// Waits for the last `submit`, then `out[t] += Σ_j weights[t, j] · expert_j(x[t])`, in choice order.
    func wait(weights: Tensor, accumulateInto out: Tensor, n: Int)
    /// Where the executor can: waits for the last `submit`, then `out[t] = Σ_j weights[t, j] · expert_j(x[t])` (the
    /// bits of zeroing `out` and `wait(weights:accumulateInto:n:)`, one pass fewer), and returns true; false: it did
    /// nothing (the caller zeroes `out` and calls `wait(weights:accumulateInto:n:)`).
    func wait(weights: Tensor, storeInto out: Tensor, n: Int) -> Bool
    /// The experts chosen so far, where this executor sees the choices on the host (nil otherwise).
    var usage: ExpertUsage? { get }
    /// After the model's last layer: adds to `out` (the residual stream) what the executor still holds back (the
    /// deferred experts of its last layer, where it defers some); nothing for an executor that defers none.
    func flush(accumulateInto out: Tensor, n: Int)
}

extension ExpertExecutor {
    public func wait(weights: Tensor, storeInto out: Tensor, n: Int) -> Bool { false }
    public var usage: ExpertUsage? { nil }
    public func flush(accumulateInto out: Tensor, n: Int) {}
}
