@testable import Engine
import XCTest

final class KVCacheManagerTests: XCTestCase {
    func testPagesAreAllocatedAsTokensArriveWithExactIds() {
        var kv = KVCacheManager(pageSize: 4, numPages: 8)
        XCTAssertTrue(kv.allocate("a", tokens: 5))
        XCTAssertEqual(kv.blockTable("a"), [0, 1])
        XCTAssertTrue(kv.allocate("b", tokens: 3))
        XCTAssertEqual(kv.blockTable("b"), [2])
        XCTAssertTrue(kv.allocate("a", tokens: 8))   // still two pages
        XCTAssertEqual(kv.blockTable("a"), [0, 1])
        XCTAssertTrue(kv.allocate("a", tokens: 9))   // a third
        XCTAssertEqual(kv.blockTable("a"), [0, 1, 3])
        XCTAssertEqual(kv.freePages, 4)
        kv.free("a")
        XCTAssertEqual(kv.freePages, 7)
        XCTAssertTrue(kv.allocate("c", tokens: 9))   // freed pages come back lowest first
        XCTAssertEqual(kv.blockTable("c"), [0, 1, 3])
    }

    func testAllocationIsAllOrNothing() {
        var kv = KVCacheManager(pageSize: 2, numPages: 3)
        XCTAssertTrue(kv.allocate("a", tokens: 4))
        XCTAssertFalse(kv.allocate("b", tokens: 4))
        XCTAssertEqual(kv.blockTable("b"), [])
        XCTAssertEqual(kv.freePages, 1)
        kv.free("b")  // unknown: no-op
        kv.free("a")
        kv.free("a")  // twice: no-op
        XCTAssertEqual(kv.freePages, 3)
    }
}

/// Prefix caching in the page manager: exact page ids, hit counts, the LRU order of reclaiming.
final class PrefixCacheTests: XCTestCase {
    private func tokens(_ t: [Int32]) -> (Int) -> Int32 { { t[$0] } }

    func testFullPagesOfAFinishedSequenceAreAdoptedByTheNext() {
        var kv = KVCacheManager(pageSize: 4, numPages: 8, prefixCaching: true)
        let a: [Int32] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
        XCTAssertTrue(kv.allocate("a", tokens: a.count))
        XCTAssertEqual(kv.blockTable("a"), [0, 1, 2])
        kv.cacheFullPages("a", computed: a.count, token: tokens(a))   // pages 0 and 1 are full
        kv.free("a")
        XCTAssertEqual(kv.freePages, 8)
        XCTAssertEqual(kv.cachedPages, 2)                              // page 2 (partial) is plainly free

        // Same first 8 tokens: both pages adopted, the new page is the free one, not a cached one.
        let b: [Int32] = [1, 2, 3, 4, 5, 6, 7, 8, 99, 100]
        XCTAssertEqual(kv.adoptPrefix("b", count: b.count, token: tokens(b)), 8)
        XCTAssertEqual(kv.cachedPages, 0)
        XCTAssertTrue(kv.allocate("b", tokens: b.count))
        XCTAssertEqual(kv.blockTable("b"), [0, 1, 2])

        // A shared first page only, while b still holds it: pages are shared, reference-counted.
        let c: [Int32] = [1, 2, 3, 4, 5, 6, 7, 9, 11]
        XCTAssertEqual(kv.adoptPrefix("c", count: c.count, token: tokens(c)), 4)
        XCTAssertTrue(kv.allocate("c", tokens: c.count))
        XCTAssertEqual(kv.blockTable("c"), [0, 3, 4])
        kv.free("b")
        XCTAssertEqual(kv.cachedPages, 1)                              // page 1 (page 0 is still c's)
        kv.free("c")
        XCTAssertEqual(kv.cachedPages, 2)
        XCTAssertEqual(kv.freePages, 8)
    }

    func testAtLeastOneTokenIsLeftToCompute() {
        var kv = KVCacheManager(pageSize: 4, numPages: 8, prefixCaching: true)
        let a: [Int32] = [1, 2, 3, 4, 5, 6, 7, 8]
        XCTAssertTrue(kv.allocate("a", tokens: 8))
        kv.cacheFullPages("a", computed: 8, token: tokens(a))
        kv.free("a")
        // The whole prompt is cached, but its last token's logits are needed: one page is recomputed.
        XCTAssertEqual(kv.adoptPrefix("b", count: 8, token: tokens(a)), 4)
        XCTAssertEqual(kv.blockTable("b"), [0])
        // A different first page: no hit, nothing changes.
        XCTAssertEqual(kv.adoptPrefix("c", count: 8, token: tokens([9, 2, 3, 4, 5, 6, 7, 8])), 0)
        XCTAssertEqual(kv.blockTable("c"), [])
    }

    func testCachedPagesAreReclaimedLeastRecentlyReleasedFirstAndOnlyWhenNeeded() {
        var kv = KVCacheManager(pageSize: 2, numPages: 4, prefixCaching: true)
        let a: [Int32] = [1, 2, 3, 4], b: [Int32] = [5, 6, 7, 8]
        XCTAssertTrue(kv.allocate("a", tokens: 4))                    // [0, 1]
        XCTAssertTrue(kv.allocate("b", tokens: 4))                    // [2, 3]
        kv.cacheFullPages("a", computed: 4, token: tokens(a))
        kv.cacheFullPages("b", computed: 4, token: tokens(b))
        kv.free("a")                                                   // released: 1 then 0
        kv.free("b")                                                   // then 3, 2
        XCTAssertEqual(kv.cachedPages, 4)
        XCTAssertTrue(kv.allocate("c", tokens: 2))                     // reclaims the least recently released
        XCTAssertEqual(kv.blockTable("c"), [1])
        XCTAssertEqual(kv.cachedPages, 3)
        // a's second page is gone, its first is still there; b's are intact.
        XCTAssertEqual(kv.adoptPrefix("a2", count: 5, token: tokens(a + [9])), 2)
        XCTAssertEqual(kv.blockTable("a2"), [0])
        XCTAssertEqual(kv.adoptPrefix("b2", count: 5, token: tokens(b + [9])), 4)
        XCTAssertEqual(kv.blockTable("b2"), [2, 3])
    }

    func testTwoSequencesComputingTheSamePrefixAtOnceRegisterItOnce() {
        var kv = KVCacheManager(pageSize: 2, numPages: 8, prefixCaching: true)
        let p: [Int32] = [1, 2, 3, 4, 5]
        XCTAssertTrue(kv.allocate("a", tokens: 5))                     // [0, 1, 2]
        XCTAssertTrue(kv.allocate("b", tokens: 5))                     // [3, 4, 5]: both before either finished
        kv.cacheFullPages("a", computed: 5, token: tokens(p))
        kv.cacheFullPages("b", computed: 5, token: tokens(p))          // same content: a's pages stay the cached ones
        kv.free("b")
        XCTAssertEqual(kv.cachedPages, 0)                              // b's copies were never registered
        XCTAssertEqual(kv.adoptPrefix("c", count: 5, token: tokens(p)), 4)
        XCTAssertEqual(kv.blockTable("c"), [0, 1])
        // b's later pages chain under a's copies: a page b fills after the dedup is adoptable through a's pages.
        kv.free("c")
    }

    func testWithoutPrefixCachingNothingIsAdoptedOrCached() {
        var kv = KVCacheManager(pageSize: 2, numPages: 4)
        let a: [Int32] = [1, 2, 3, 4]
        XCTAssertTrue(kv.allocate("a", tokens: 4))
        kv.cacheFullPages("a", computed: 4, token: tokens(a))
        kv.free("a")
        XCTAssertEqual(kv.cachedPages, 0)
        XCTAssertEqual(kv.adoptPrefix("b", count: 5, token: tokens(a + [5])), 0)
    }
}
