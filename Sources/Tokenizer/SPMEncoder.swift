/// llama.cpp's SentencePiece-style (`llm_tokenizer_spm`) encoder: the text (spaces already escaped as ▁) is cut
/// into UTF-8 characters, then the adjacent pair whose concatenation is the highest-scoring token is merged,
/// repeatedly (ties: leftmost first). Characters that end up in no token become byte tokens `<0xXX>`.
struct SPMEncoder: Sendable {
    let table: ByteStringTable
    let scores: [Float]
    /// Token for each byte value (`<0xXX>`, else the one-byte token), -1 if none.
    let byteTokens: [Int32]
    let unknownID: Int32?

    private struct Bigram {
        var score: Float
        var left: Int32
        var right: Int32
        var size: Int32
    }

    func encode(_ text: [UInt8], into out: inout [Int32]) {
        guard !text.isEmpty else { return }
        var start: [Int32] = [], len: [Int32] = []
        var offset = 0
        while offset < text.count {
            let n = min(utf8SequenceLength(text[offset]), text.count - offset)
            start.append(Int32(offset))
            len.append(Int32(n))
            offset += n
        }
        let count = start.count
        var prev = (0..<count).map { Int32($0 - 1) }
        var next = (0..<count).map { $0 + 1 < count ? Int32($0 + 1) : -1 }
        var queue = Heap<Bigram> { a, b in a.score > b.score || (a.score == b.score && a.left < b.left) }

        text.withUnsafeBufferPointer { buf in
            let base = buf.baseAddress!
            func tryAdd(_ l: Int32, _ r: Int32) {
                guard l >= 0, r >= 0 else { return }
                let size = len[Int(l)] + len[Int(r)]
                guard let id = table.lookup(base + Int(start[Int(l)]), Int(size)) else { return }
                queue.push(Bigram(score: scores[Int(id)], left: l, right: r, size: size))
            }
            for i in 1..<max(count, 1) { tryAdd(Int32(i - 1), Int32(i)) }

            while let b = queue.pop() {
                let l = Int(b.left), r = Int(b.right)
                // Skip pairs whose symbols changed since they were queued.
                guard len[l] > 0, len[r] > 0, len[l] + len[r] == b.size else { continue }
                len[l] += len[r]
                len[r] = 0
                next[l] = next[r]
                if next[r] >= 0 { prev[Int(next[r])] = b.left }
                tryAdd(prev[l], b.left)
                tryAdd(b.left, next[l])
            }

            var i = 0
            while i >= 0 {
                let s = Int(start[i]), n = Int(len[i])
                if let id = table.lookup(base + s, n) {
                    out.append(id)
                } else {
                    for k in s..<(s + n) {
                        let t = byteTokens[Int(buf[k])]
                        if t >= 0 { out.append(t) } else if let unk = unknownID { out.append(unk) }
                    }
                }
                i = Int(next[i])
            }
        }
    }
}

/// Length of the UTF-8 sequence a byte starts (llama.cpp's `unicode_len_utf8`: stray continuation bytes count 1).
@inline(__always)
func utf8SequenceLength(_ b: UInt8) -> Int {
    switch b >> 4 {
    case 0xC, 0xD: return 2
    case 0xE: return 3
    case 0xF: return 4
    default: return 1
    }
}
