/// llama.cpp's byte-level BPE (`llm_tokenizer_bpe`) encoder: the pre-tokenizer cuts the text into words, each
/// word's bytes are written in the byte-level alphabet, then the adjacent pair with the lowest merge rank is
/// merged, repeatedly (ties: leftmost first).
struct BPEEncoder: Sendable {
    /// Token texts → ids (below `vocabSize`), plus merge halves that are not tokens (ids from `vocabSize` on).
    let pieces: ByteStringTable
    let vocabSize: Int
    /// (left piece id << 32 | right piece id) → merge rank.
    let ranks: [UInt64: Int32]
    let pre: PreTokenizer

    private struct Bigram {
        var rank: Int32
        var left: Int32
        var right: Int32
        var leftLen: Int32
        var rightLen: Int32
    }

    func encode(_ text: ArraySlice<UInt8>, into out: inout [Int32]) {
        let scalars = Array(String(decoding: text, as: UTF8.self).unicodeScalars)
        var utf8: [UInt8] = []
        for r in pre.split(scalars) {
            utf8.removeAll(keepingCapacity: true)
            for s in scalars[r] { utf8.append(contentsOf: UTF8.encode(s)!) }
            encodeWord(ByteLevel.encode(utf8), into: &out)
        }
    }

    @inline(__always)
    private func token(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int32? {
        guard let id = pieces.lookup(p, n), Int(id) < vocabSize else { return nil }
        return id
    }

    private func encodeWord(_ word: [UInt8], into out: inout [Int32]) {
        word.withUnsafeBufferPointer { buf in
            let base = buf.baseAddress!
            if pre.ignoreMerges, let id = token(base, buf.count) {
                out.append(id)
                return
            }
            var start: [Int32] = [], len: [Int32] = [], pid: [Int32] = []
            var offset = 0
            while offset < buf.count {
                let n = min(utf8SequenceLength(buf[offset]), buf.count - offset)
                start.append(Int32(offset))
                len.append(Int32(n))
                pid.append(pieces.lookup(base + offset, n) ?? -1)
                offset += n
            }
            let count = start.count
            var prev = (0..<count).map { Int32($0 - 1) }
            var next = (0..<count).map { $0 + 1 < count ? Int32($0 + 1) : -1 }
            var queue = Heap<Bigram> { a, b in a.rank < b.rank || (a.rank == b.rank && a.left < b.left) }

            func tryAdd(_ l: Int32, _ r: Int32) {
                guard l >= 0, r >= 0 else { return }
                let a = pid[Int(l)], b = pid[Int(r)]
                guard a >= 0, b >= 0, let rank = ranks[UInt64(UInt32(a)) << 32 | UInt64(UInt32(b))] else { return }
                queue.push(Bigram(rank: rank, left: l, right: r, leftLen: len[Int(l)], rightLen: len[Int(r)]))
            }
            for i in 1..<max(count, 1) { tryAdd(Int32(i - 1), Int32(i)) }

            while let b = queue.pop() {
                let l = Int(b.left), r = Int(b.right)
                guard len[l] == b.leftLen, len[r] == b.rightLen, len[l] > 0, len[r] > 0 else { continue }
                len[l] += len[r]
                len[r] = 0
                next[l] = next[r]
                if next[r] >= 0 { prev[Int(next[r])] = b.left }
                pid[l] = pieces.lookup(base + Int(start[l]), Int(len[l])) ?? -1
                tryAdd(prev[l], b.left)
                tryAdd(b.left, next[l])
            }

            var i = 0
            while i >= 0 {
                let s = Int(start[i]), n = Int(len[i])
                if let id = token(base + s, n) {
                    out.append(id)
                } else {
                    // No such token (a vocabulary without all 256 byte symbols): emit what characters exist.
                    var k = s
                    while k < s + n {
                        let m = min(utf8SequenceLength(buf[k]), s + n - k)
                        if let id = token(base + k, m) { out.append(id) }
                        k += m
                    }
                }
                i = Int(next[i])
            }
        }
    }
}
