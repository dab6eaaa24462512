/// The scalar kernels shared by the 32-element block formats, which differ only in how a block's 32 quants are
/// decoded (`decode`). `Scaled`: `{ half d; ... }`, x = d·q (Q4_0, Q5_0, IQ4_NL). `ScaledWithMin`:
/// `{ half d; half m; ... }`, x = d·q + m (Q4_1, Q5_1). Both dot with Q8_0 activations in `vecDot`.
enum Blocks32 {
    typealias Decode = (_ block: UnsafeRawPointer, _ q: UnsafeMutablePointer<Int8>) -> Void

    enum Scaled {
        @inline(__always)
        static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int, typeSize: Int,
                               decode: Decode) {
            withQuantScratch { q in
                for b in 0..<(count / 32) {
                    let p = src + b * typeSize
                    decode(p, q)
                    scaleI8(q, readF16(p, 0), dst + b * 32, 32)
                }
            }
        }

        @inline(__always)
        static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int, typeSize: Int,
                           decode: Decode) -> Float {
            withQuantScratch { q in
                var s: Float = 0
                for b in 0..<(count / 32) {
                    let p = row + b * typeSize
                    decode(p, q)
                    s += readF16(p, 0) * dotI8F32(q, x + b * 32, 32)
                }
                return s
            }
        }

        /// Row · Q8_0 activation: Σ_blocks d_w·d_x·Σ q_w·q_x, the integer sums exact.
        @inline(__always)
        static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int, typeSize: Int,
                           decode: Decode) -> Float {
            withQuantScratch { q in
                var s: Float = 0
                for b in 0..<(count / 32) {
                    let p = row + b * typeSize, y = xq + b * Q8_0.typeSize
                    decode(p, q)
                    s += Float(dotI8I8(q, y + 2, 32)) * (readF16(p, 0) * readF16(y, 0))
                }
                return s
            }
        }
    }

    enum ScaledWithMin {
        @inline(__always)
        static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int, typeSize: Int,
                               decode: Decode) {
            withQuantScratch { q in
                for b in 0..<(count / 32) {
                    let p = src + b * typeSize
                    decode(p, q)
                    scaleI8(q, readF16(p, 0), plus: readF16(p, 2), dst + b * 32, 32)
                }
            }
        }

        @inline(__always)
        static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int, typeSize: Int,
                           decode: Decode) -> Float {
            withQuantScratch { q in
                var s: Float = 0
                for b in 0..<(count / 32) {
                    let p = row + b * typeSize
                    decode(p, q)
                    let xb = x + b * 32
                    s += readF16(p, 0) * dotI8F32(q, xb, 32) + readF16(p, 2) * sumF32(xb, 32)
                }
                return s
            }
        }

        /// Row · Q8_0 activation: the min term from the Q8_0 block's sum, computed on the fly.
        @inline(__always)
        static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int, typeSize: Int,
                           decode: Decode) -> Float {
            withQuantScratch { q in
                var s: Float = 0
                for b in 0..<(count / 32) {
                    let p = row + b * typeSize, y = xq + b * Q8_0.typeSize
                    decode(p, q)
                    let dx = readF16(y, 0)
                    s += Float(dotI8I8(q, y + 2, 32)) * (readF16(p, 0) * dx)
                        + Float(sumI8(y + 2, 32)) * (readF16(p, 2) * dx)
                }
                return s
            }
        }
    }
}
