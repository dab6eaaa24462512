/// The paged KV pool's bookkeeping: a free list of page ids and each sequence's block table. Integers only —
/// the memory itself is the backend's `KVCache`. Pages are allocated as tokens arrive (never reserved for
/// `prompt + max_tokens` up front) and returned the moment a sequence finishes, is aborted or preempted.
public struct KVCacheManager: Sendable {
    public let pageSize: Int
    public let numPages: Int
    /// Free page ids; allocation pops from the end, so after `init` pages are handed out 0, 1, 2, ...
    private var freeList: [Int32]
    private var tables: [String: [Int32]] = [:]

    public init(pageSize: Int, numPages: Int) {
        precondition(pageSize > 0 && numPages > 0)
        self.pageSize = pageSize
        self.numPages = numPages
        freeList = (0..<Int32(numPages)).reversed()
    }

    public var freePages: Int { freeList.count }
    public var usedPages: Int { numPages - freeList.count }

    public func blockTable(_ id: String) -> [Int32] { tables[id] ?? [] }

    /// Pages sequence `id` still needs so that `tokens` positions are covered.
    public func pagesNeeded(_ id: String, tokens: Int) -> Int {
        max(0, (tokens + pageSize - 1) / pageSize - (tables[id]?.count ?? 0))
    }

    /// Extends `id`'s block table to cover `tokens` positions. All or nothing: returns false (and changes
    /// nothing) when the free list is too short.
    public mutating func allocate(_ id: String, tokens: Int) -> Bool {
        let need = pagesNeeded(id, tokens: tokens)
        guard need <= freeList.count else { return false }
        if need > 0 {
            tables[id, default: []].append(contentsOf: freeList.suffix(need).reversed())
            freeList.removeLast(need)
        } else if tables[id] == nil {
            tables[id] = []
        }
        return true
    }

    /// Returns all of `id`'s pages to the pool.
    public mutating func free(_ id: String) {
        guard let pages = tables.removeValue(forKey: id) else { return }
        freeList.append(contentsOf: pages.reversed())
    }
}
