/// The kernels of one element type: what a matmul needs to use weights stored in it.
///
/// Rows are whole numbers of blocks; `count` is a number of elements (a multiple of `GGMLType.blockSize`).
/// Each format lives in its own file as an `enum` with static functions of the same names (`Q4_K.dequantize`,
/// `Q4_K.dotF32`, ...), and registers itself in `QuantRegistry`.
public struct QuantKernels: Sendable {
    public typealias Dequantize = @Sendable (_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) -> Void
    public typealias Quantize = @Sendable (_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) -> Void
    public typealias DotF32 = @Sendable (_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float
    public typealias VecDot = @Sendable (_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float
    /// `out[j] = row · xq[j]` for `j < nx` (1 ≤ nx ≤ 4), activation row j at `xq + j·xqStride` bytes.
    public typealias VecDotMulti = @Sendable (_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int,
                                              _ nx: Int, _ out: UnsafeMutablePointer<Float>, _ count: Int) -> Void
    /// `out[j] = row · x[j·xStride ..< j·xStride + count]` for `j < nx` (1 ≤ nx ≤ 4), `xStride` in floats.
    /// `out[4j + i] = row_i · xq_j` for `i < nr` (1 ≤ nr ≤ 4) rows `rowStride` bytes apart and `j < nx` (1 or 2)
    /// activation rows `xqStride` bytes apart.
    public typealias VecDotRows = @Sendable (_ rows: UnsafeRawPointer, _ rowStride: Int, _ nr: Int,
                                             _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                                             _ out: UnsafeMutablePointer<Float>, _ count: Int) -> Void
    public typealias DotF32Multi = @Sendable (_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ xStride: Int,
                                              _ nx: Int, _ out: UnsafeMutablePointer<Float>, _ count: Int) -> Void

    public let type: GGMLType
    /// Decodes `count` elements to f32.
    public let dequantize: Dequantize
    /// Encodes `count` f32 values (nil for formats we only read).
    public let quantize: Quantize?
    /// Dot product of one stored row with an f32 vector (dequantizing on the fly): the accurate path.
    public let dotF32: DotF32
    /// The activation format `vecDot` takes (`.q8_0` for the 32-blocks, `.q8_K` for the K- and IQ-quants,
    /// `.f32` for float formats).
    public let vecDotType: GGMLType
    /// Dot product of one stored row with an activation row already quantized to `vecDotType`.
    public let vecDot: VecDot
    /// `vecDot` of one stored row with up to 4 activation rows, reading each weight block once (nil when the
    /// format has none: loop over `vecDot`, or use `referenceVecDotMulti`).
    public let vecDotMulti: VecDotMulti?
    /// `dotF32` of one stored row with up to 4 f32 rows, decoding each weight block once (nil when the format has
    /// none: use `referenceDotF32Multi`). Where a format has one, each `out[j]` is bit-identical to `dotF32` of
    /// that row (the single-row kernel is the nx = 1 case of the same code).
    public let dotF32Multi: DotF32Multi?
    /// Tiled matrix product against many activation rows quantized to `vecDotType` (nil when the format has none):
    /// each output has exactly `vecDot`'s bits.
    public let vecDotTile: TileKernels?
    /// Tiled matrix product against many f32 activation rows (nil when the format has none): each output has
    /// exactly `dotF32`'s bits.
    public let dotF32Tile: TileKernels?
    /// Dot products of one stored row with up to 4 activation rows in `Q16_K` (16-bit) form, `xqStride` bytes
    /// apart: nearly `dotF32`'s accuracy at close to `vecDotMulti`'s speed (nil when the format has none; then
    /// callers use `dotF32Multi`). For any nx, each `out[j]` has the bits of the nx = 1 call.
    public let q16DotMulti: VecDotMulti?
    /// `out[4j + i] = row_i · xq_j` for `i < nr` (1 ≤ nr ≤ 4) stored rows `rowStride` bytes apart and `j < nx`
    /// (1 or 2) `Q16_K` activation rows, with exactly `q16DotMulti`'s bits (nil where the format has none): the MoE
    /// kernel's case of an expert that one or two tokens chose, where per-row costs otherwise dominate short rows.
    public let q16DotRows: VecDotRows?

    public init(type: GGMLType, dequantize: @escaping Dequantize, quantize: Quantize?, dotF32: @escaping DotF32,
                vecDotType: GGMLType, vecDot: @escaping VecDot, vecDotMulti: VecDotMulti? = nil,
                dotF32Multi: DotF32Multi? = nil, vecDotTile: TileKernels? = nil, dotF32Tile: TileKernels? = nil,
                q16DotMulti: VecDotMulti? = nil, q16DotRows: VecDotRows? = nil) {
        self.type = type
        self.dequantize = dequantize
        self.quantize = quantize
        self.dotF32 = dotF32
        self.vecDotType = vecDotType
        self.vecDot = vecDot
        self.vecDotMulti = vecDotMulti
        self.dotF32Multi = dotF32Multi
        self.vecDotTile = vecDotTile
        self.dotF32Tile = dotF32Tile
        self.q16DotMulti = q16DotMulti
        self.q16DotRows = q16DotRows
    }

    /// The reference `VecDotMulti` of a `vecDot`: one call per activation row.
    public static func referenceVecDotMulti(_ vecDot: @escaping VecDot) -> VecDotMulti {
        { row, xq, xqStride, nx, out, count in
            for j in 0..<nx { out[j] = vecDot(row, xq + j * xqStride, count) }
        }
    }

    /// These kernels with `vecDotMulti` filled in by `referenceVecDotMulti` when it is nil.
    public func withReferenceVecDotMulti() -> QuantKernels {
        if vecDotMulti != nil { return self }
        return QuantKernels(type: type, dequantize: dequantize, quantize: quantize, dotF32: dotF32,
                            vecDotType: vecDotType, vecDot: vecDot,
                            vecDotMulti: QuantKernels.referenceVecDotMulti(vecDot), dotF32Multi: dotF32Multi,
                            vecDotTile: vecDotTile, dotF32Tile: dotF32Tile, q16DotMulti: q16DotMulti,
                            q16DotRows: q16DotRows)
    }

    /// The reference `DotF32Multi` of a `dotF32`: one call per f32 row (so bit-identical to it).
    public static func referenceDotF32Multi(_ dotF32: @escaping DotF32) -> DotF32Multi {
        { row, x, xStride, nx, out, count in
            for j in 0..<nx { out[j] = dotF32(row, x + j * xStride, count) }
        }
    }

    /// These kernels with `vecDotMulti` and `dotF32Multi` filled in by the reference loops where nil.
    public func withReferenceMulti() -> QuantKernels {
        if vecDotMulti != nil && dotF32Multi != nil { return self }
        return QuantKernels(type: type, dequantize: dequantize, quantize: quantize, dotF32: dotF32,
                            vecDotType: vecDotType, vecDot: vecDot,
                            vecDotMulti: vecDotMulti ?? QuantKernels.referenceVecDotMulti(vecDot),
                            dotF32Multi: dotF32Multi ?? QuantKernels.referenceDotF32Multi(dotF32),
                            vecDotTile: vecDotTile, dotF32Tile: dotF32Tile, q16DotMulti: q16DotMulti,
                            q16DotRows: q16DotRows)
    }

    /// These kernels with `vecDot`, `vecDotMulti` (and optionally `dotF32`, `dotF32Multi`, the tile kernels)
    /// replaced: how a faster kernel set overrides some entries of another. Replacing `vecDot` (`dotF32`) drops the
    /// old `vecDotTile` (`dotF32Tile`) unless a new one is given: a tile kernel must match its one-row kernel's bits.
    public func replacing(vecDot: VecDot? = nil, vecDotMulti: VecDotMulti? = nil, quantize: Quantize? = nil,
                          dotF32: DotF32? = nil, dotF32Multi: DotF32Multi? = nil, vecDotTile: TileKernels? = nil,
                          dotF32Tile: TileKernels? = nil, q16DotMulti: VecDotMulti? = nil,
                          q16DotRows: VecDotRows? = nil) -> QuantKernels {
        QuantKernels(type: type, dequantize: dequantize, quantize: quantize ?? self.quantize,
                     dotF32: dotF32 ?? self.dotF32, vecDotType: vecDotType, vecDot: vecDot ?? self.vecDot,
                     vecDotMulti: vecDotMulti ?? self.vecDotMulti, dotF32Multi: dotF32Multi ?? self.dotF32Multi,
                     vecDotTile: vecDotTile ?? (vecDot == nil ? self.vecDotTile : nil),
                     dotF32Tile: dotF32Tile ?? (dotF32 == nil ? self.dotF32Tile : nil),
                     q16DotMulti: q16DotMulti ?? self.q16DotMulti,
                     q16DotRows: q16DotRows ?? (q16DotMulti == nil ? self.q16DotRows : nil))
    }
}

/// A tiled matrix product: `y[j·yStride + i] = row_i · x_j` for `i < nr` weight rows (`rowBytes` apart) and
/// `j < nx` activation rows (`xStride` bytes apart), each weight row decoded once per call (into `scratch`) and
/// register-blocked against several activation rows at a time. Every output has exactly the bits of the format's
/// one-row kernel (`vecDot` for `QuantKernels.vecDotTile`, `dotF32` for `dotF32Tile`), so a token's result never
/// depends on how many others share the call.
public struct TileKernels: Sendable {
    /// Rewrites one activation row (`count` elements, already quantized to `vecDotType`) into the layout `gemm`
    /// reads, `preparedBytes(count)` bytes at `dst`. Nil: `gemm` reads the activation rows as they are.
    public typealias Prepare = @Sendable (_ xq: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer, _ count: Int) -> Void
    public typealias Gemm = @Sendable (_ w: UnsafeRawPointer, _ rowBytes: Int, _ nr: Int, _ x: UnsafeRawPointer,
                                       _ xStride: Int, _ nx: Int, _ y: UnsafeMutablePointer<Float>, _ yStride: Int,
                                       _ count: Int, _ scratch: UnsafeMutableRawPointer) -> Void

    public let prepare: Prepare?
    /// Bytes of one prepared activation row of `count` elements (unused when `prepare` is nil).
    public let preparedBytes: @Sendable (_ count: Int) -> Int
    /// Bytes of `scratch` (64-byte aligned) one `gemm` call of `nr` rows of `count` elements needs.
    public let scratchBytes: @Sendable (_ nr: Int, _ count: Int) -> Int
    public let gemm: Gemm
    /// The fewest token rows from which a matmul takes this tile path instead of the multi-row kernels (which
    /// decode each weight block once per 4 token rows): where decoding into the tile layout has paid for itself.
    public let minRows: Int

    public init(prepare: Prepare?, preparedBytes: @escaping @Sendable (_ count: Int) -> Int,
                scratchBytes: @escaping @Sendable (_ nr: Int, _ count: Int) -> Int, minRows: Int = 5,
                gemm: @escaping Gemm) {
        self.prepare = prepare
        self.preparedBytes = preparedBytes
        self.scratchBytes = scratchBytes
        self.minRows = minRows
        self.gemm = gemm
    }
}
