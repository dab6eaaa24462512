/// Finds stop strings in streamed text, across token boundaries, without ever emitting any part of one.
///
/// Text goes in as it is detokenized; what comes out is safe to send: the matcher holds back the longest tail
/// that could still be the start of a stop string. On a match, everything before it is released and the rest
/// (the stop string and whatever followed in the same push) is dropped. Matching is on UTF-8 bytes, so a stop
/// string is found whatever its Unicode normalisation context, and since both sides are valid UTF-8 a match
/// or a held-back tail always begins on a character boundary.
public struct StopStringMatcher: Sendable {
    public let stops: [[UInt8]]
    private let longest: Int
    /// Bytes received but not yet released.
    private var held: [UInt8] = []
    public private(set) var matched: String?
    /// Bytes released so far (the offset of the next released byte).
    public private(set) var releasedBytes = 0

    public init(_ stops: [String]) {
        self.stops = stops.filter { !$0.isEmpty }.map { Array($0.utf8) }
        longest = self.stops.map(\.count).max() ?? 0
    }

    public var isEmpty: Bool { stops.isEmpty }

    /// Adds newly generated text; returns the text that may be sent now. After a match (`matched` is set),
    /// returns "" forever.
    public mutating func push(_ text: String) -> String {
        guard matched == nil else { return "" }
        if stops.isEmpty {
            releasedBytes += text.utf8.count
            return text
        }
        held.append(contentsOf: text.utf8)
        // Earliest match of any stop string (ties: the longest, which makes no difference to what is released).
        var best: (at: Int, stop: Int)? = nil
        for (si, s) in stops.enumerated() {
            if let at = Self.find(s, in: held), best == nil || at < best!.at { best = (at, si) }
        }
        if let best {
            let out = String(decoding: held[..<best.at], as: UTF8.self)
            matched = String(decoding: stops[best.stop], as: UTF8.self)
            releasedBytes += best.at
            held.removeAll()
            return out
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        var keep = 0
        let maxKeep = min(held.count, longest - 1)
        if maxKeep > 0 {
            for k in stride(from: maxKeep, to: 0, by: -1) {
                let tail = held[(held.count - k)...]
                if stops.contains(where: { $0.count > k && $0[..<k].elementsEqual(tail) }) { keep = k; break }
            }
        }
        let n = held.count - keep
        guard n > 0 else { return "" }
        let out = String(decoding: held[..<n], as: UTF8.self)
        held.removeFirst(n)
        releasedBytes += n
        return out
    }

    /// The end of generation without a match: everything held back is released.
    public mutating func finish() -> String {
        guard matched == nil else { return "" }
        defer { held.removeAll() }
        releasedBytes += held.count
        return String(decoding: held, as: UTF8.self)
    }

    static func find(_ needle: [UInt8], in hay: [UInt8]) -> Int? {
        guard !needle.isEmpty, hay.count >= needle.count else { return nil }
        let first = needle[0]
        var i = 0
        let last = hay.count - needle.count
        while i <= last {
            if hay[i] == first && hay[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }
}
