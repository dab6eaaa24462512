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
