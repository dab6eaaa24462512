/// The paged KV pool's bookkeeping: which pages are free, each sequence's block table, and (with prefix caching)
/// which full pages hold which token prefix. Integers only — the memory itself is the backend's `KVCache`. Pages
/// are allocated as tokens arrive (never reserved for `prompt + max_tokens` up front) and released the moment a
/// sequence finishes, is aborted or preempted.
///
/// Prefix caching (vLLM's automatic prefix caching, by page): once a page is full its content is registered under
/// a key made of its parent page (the page before it in the sequence, with that page's registration number) and
/// its own token ids, so a key names the whole prefix up to and including the page, exactly (no hash can
/// collide). A new sequence adopts the longest run of registered pages that its tokens begin with and computes
/// only the rest. Pages are reference-counted; a released page that holds a registered prefix stays cached (and
/// adoptable) until the pool needs it, least recently released first; pages holding nothing reusable are handed
/// out before any cached one.
public struct KVCacheManager: Sendable {
    public let pageSize: Int
    public let numPages: Int
    public let prefixCaching: Bool
    /// Unreferenced pages that hold no registered prefix; allocation pops from the end, so after `init` pages are
    /// handed out 0, 1, 2, ...
    private var freeList: [Int32]
    private var tables: [String: [Int32]] = [:]
    /// `// [numPages]` sequences using each page.
    private var refCount: [Int32]
    /// `// [numPages]` the key a page is registered under (nil: none).
    private var keyOf: [PageKey?]
    /// `// [numPages]` how many times each page has been registered: part of its children's keys, so a child
    /// registered under an earlier content of the page can never match again.
    private var generation: [UInt32]
    private var cached: [PageKey: Int32] = [:]
    /// Unreferenced registered pages, least recently released first.
    private var lru: PageList
    /// Per sequence: pages registered (or adopted) so far, and the page its next full page hangs under.
    private var chains: [String: Chain] = [:]

    /// A page's content: the registered page before it (-1 for the first page of a sequence) and its tokens.
    struct PageKey: Hashable, Sendable {
        let parent: Int32
        let parentGeneration: UInt32
        let tokens: [Int32]
    }

    struct Chain: Sendable {
        var pages = 0
        var parent: Int32 = -1
        var parentGeneration: UInt32 = 0
    }

    public init(pageSize: Int, numPages: Int, prefixCaching: Bool = false) {
        precondition(pageSize > 0 && numPages > 0)
        self.pageSize = pageSize
        self.numPages = numPages
        self.prefixCaching = prefixCaching
        freeList = (0..<Int32(numPages)).reversed()
        refCount = Array(repeating: 0, count: numPages)
        keyOf = Array(repeating: nil, count: numPages)
        generation = Array(repeating: 0, count: numPages)
        lru = PageList(count: numPages)
    }

    /// Pages no sequence uses: free ones and cached ones (which allocation reclaims when it must).
    public var freePages: Int { freeList.count + lru.count }
    /// Unreferenced pages that hold a cached prefix.
    public var cachedPages: Int { lru.count }

    public func blockTable(_ id: String) -> [Int32] { tables[id] ?? [] }

    /// Pages sequence `id` still needs so that `tokens` positions are covered.
    public func pagesNeeded(_ id: String, tokens: Int) -> Int {
        max(0, (tokens + pageSize - 1) / pageSize - (tables[id]?.count ?? 0))
    }

    /// Extends `id`'s block table to cover `tokens` positions. All or nothing: returns false (and changes
    /// nothing) when the pool is too short.
    public mutating func allocate(_ id: String, tokens: Int) -> Bool {
        let need = pagesNeeded(id, tokens: tokens)
        guard need <= freePages else { return false }
        var table = tables.removeValue(forKey: id) ?? []
        for _ in 0..<need {
            let p: Int32
            if let f = freeList.popLast() {
                p = f
            } else {
                // Reclaim the least recently released cached page: its prefix is no longer adoptable.
                p = lru.popFirst()!
                if let k = keyOf[Int(p)] { cached[k] = nil }
                keyOf[Int(p)] = nil
            }
            refCount[Int(p)] = 1
            table.append(p)
        }
        tables[id] = table
        return true
    }

    /// Adopts, for a sequence that has no pages yet, the longest run of cached pages its first `count` tokens
    /// begin with, leaving at least one token to compute (its logits are needed). Returns the tokens adopted
    /// (a multiple of the page size); they need no computing.
    public mutating func adoptPrefix(_ id: String, count: Int, token: (Int) -> Int32) -> Int {
        guard prefixCaching, tables[id] == nil, count > 1 else { return 0 }
        var chain = Chain()
        var table: [Int32] = []
        while (table.count + 1) * pageSize <= count - 1 {
            let start = table.count * pageSize
            let key = PageKey(parent: chain.parent, parentGeneration: chain.parentGeneration,
                              tokens: (start..<start + pageSize).map(token))
            guard let p = cached[key] else { break }
            if refCount[Int(p)] == 0 { lru.remove(p) }
            refCount[Int(p)] += 1
            table.append(p)
            chain = Chain(pages: table.count, parent: p, parentGeneration: generation[Int(p)])
        }
        guard !table.isEmpty else { return 0 }
        tables[id] = table
        chains[id] = chain
        return table.count * pageSize
    }

    /// Registers the pages of `id` that its first `computed` tokens fill (call after they were computed), so
    /// that later sequences can adopt them. A page whose prefix is already registered elsewhere is left
    /// unregistered; the chain continues from the registered copy (same tokens, same K/V).
    public mutating func cacheFullPages(_ id: String, computed: Int, token: (Int) -> Int32) {
        guard prefixCaching, let table = tables[id] else { return }
        var chain = chains[id] ?? Chain()
        let full = min(computed / pageSize, table.count)
        guard chain.pages < full else { return }
        while chain.pages < full {
            let p = table[chain.pages]
            let start = chain.pages * pageSize
            let key = PageKey(parent: chain.parent, parentGeneration: chain.parentGeneration,
                              tokens: (start..<start + pageSize).map(token))
            var canonical = p
            if let existing = cached[key] {
                canonical = existing
            } else if keyOf[Int(p)] == nil {
                generation[Int(p)] &+= 1
                keyOf[Int(p)] = key
                cached[key] = p
            }
            chain = Chain(pages: chain.pages + 1, parent: canonical, parentGeneration: generation[Int(canonical)])
        }
        chains[id] = chain
    }

    /// Releases all of `id`'s pages: each page no other sequence uses becomes free, or cached if it holds a
    /// registered prefix (the sequence's last pages first in line to be reclaimed).
    public mutating func free(_ id: String) {
        chains[id] = nil
        guard let pages = tables.removeValue(forKey: id) else { return }
        for p in pages.reversed() {
            refCount[Int(p)] -= 1
            guard refCount[Int(p)] == 0 else { continue }
            if keyOf[Int(p)] != nil { lru.append(p) } else { freeList.append(p) }
        }
    }
}

/// A doubly-linked list of page ids with O(1) append, remove and pop-first (the cached pages' LRU order).
struct PageList: Sendable {
    private var prev: [Int32]
    private var next: [Int32]
    private var member: [Bool]
    private var head: Int32 = -1
    private var tail: Int32 = -1
    private(set) var count = 0

    init(count n: Int) {
        prev = Array(repeating: -1, count: n)
        next = Array(repeating: -1, count: n)
        member = Array(repeating: false, count: n)
    }

    mutating func append(_ p: Int32) {
        precondition(!member[Int(p)])
        member[Int(p)] = true
        prev[Int(p)] = tail
        next[Int(p)] = -1
        if tail >= 0 { next[Int(tail)] = p } else { head = p }
        tail = p
        count += 1
    }

    mutating func remove(_ p: Int32) {
        guard member[Int(p)] else { return }
        member[Int(p)] = false
        let a = prev[Int(p)], b = next[Int(p)]
        if a >= 0 { next[Int(a)] = b } else { head = b }
        if b >= 0 { prev[Int(b)] = a } else { tail = a }
        count -= 1
    }

    mutating func popFirst() -> Int32? {
        guard head >= 0 else { return nil }
        let p = head
        remove(p)
        return p
    }

    /// Page ids from least to most recently appended.
    var ordered: [Int32] {
        var out: [Int32] = []
        var p = head
        while p >= 0 { out.append(p); p = next[Int(p)] }
        return out
    }
}
