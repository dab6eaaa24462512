/// An open-addressing hash map from byte strings to `Int32`, looked up by pointer and length so that the merge
/// loops can probe any slice of their input without building a `String` or an `Array`.
struct ByteStringTable: Sendable {
    private var storage: [UInt8] = []
    private var starts: [Int] = [0]
    private var values: [Int32] = []
    private var slots: [Int32]
    private let mask: Int

    init(capacity: Int) {
        var size = 16
        while size < capacity * 2 { size <<= 1 }
        slots = [Int32](repeating: -1, count: size)
        mask = size - 1
    }

    var count: Int { values.count }

    private static func hash(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for i in 0..<n {
            h = (h ^ UInt64(p[i])) &* 0x0000_0100_0000_01b3
        }
        return Int(truncatingIfNeeded: h ^ (h >> 29))
    }

    /// Inserts `key` → `value` unless the string is already present; returns whether it was inserted.
    @discardableResult
    mutating func insert(_ key: UnsafeBufferPointer<UInt8>, value: Int32) -> Bool {
        let p = key.baseAddress ?? Self.emptyKey
        if lookup(p, key.count) != nil { return false }
        precondition(values.count * 2 < slots.count, "ByteStringTable over capacity")
        var i = Self.hash(p, key.count) & mask
        while slots[i] >= 0 { i = (i + 1) & mask }
        slots[i] = Int32(values.count)
        storage.append(contentsOf: key)
        starts.append(storage.count)
        values.append(value)
        return true
    }

    @discardableResult
    mutating func insert(_ key: String, value: Int32) -> Bool {
        var key = key
        return key.withUTF8 { insert($0, value: value) }
    }

    @discardableResult
    mutating func insert(_ key: [UInt8], value: Int32) -> Bool {
        key.withUnsafeBufferPointer { insert($0, value: value) }
    }

    private static var emptyKey: UnsafePointer<UInt8> { UnsafePointer(bitPattern: 1)! }

    func lookup(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int32? {
        var i = Self.hash(p, n) & mask
        return storage.withUnsafeBufferPointer { st in
            while true {
                let e = Int(slots[i])
                if e < 0 { return nil }
                let s = starts[e], len = starts[e + 1] - s
                if len == n && (n == 0 || memcmpBytes(st.baseAddress! + s, p, n)) { return values[e] }
                i = (i + 1) & mask
            }
        }
    }

    func lookup(_ bytes: UnsafeBufferPointer<UInt8>) -> Int32? {
        lookup(bytes.baseAddress ?? Self.emptyKey, bytes.count)
    }

    func lookup(_ bytes: [UInt8]) -> Int32? {
        bytes.withUnsafeBufferPointer { lookup($0) }
    }

    func lookup(_ s: String) -> Int32? {
        var s = s
        return s.withUTF8 { lookup($0) }
    }
}

@inline(__always)
private func memcmpBytes(_ a: UnsafePointer<UInt8>, _ b: UnsafePointer<UInt8>, _ n: Int) -> Bool {
    for i in 0..<n where a[i] != b[i] { return false }
    return true
}
