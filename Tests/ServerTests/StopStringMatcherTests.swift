import XCTest
@testable import Server

final class StopStringMatcherTests: XCTestCase {
    /// Feeds `pieces` one by one; returns what was released and whether a stop matched.
    func run(_ stops: [String], _ pieces: [String]) -> (String, String?) {
        var m = StopStringMatcher(stops)
        var out = ""
        for p in pieces {
            out += m.push(p)
            if m.matched != nil { return (out, m.matched) }
        }
        out += m.finish()
        return (out, nil)
    }

    func testMatchAcrossTokenBoundaries() {
        XCTAssertEqual(run(["END"], ["Hello E", "N", "D and more"]).0, "Hello ")
        XCTAssertEqual(run(["END"], ["Hello E", "N", "D and more"]).1, "END")
        XCTAssertEqual(run(["\n\n"], ["a\n", "\nb"]).0, "a")
        XCTAssertEqual(run(["abc"], ["a", "b", "c"]).0, "")
    }

    func testNeverEmitsAPrefixOfAStopString() {
        var m = StopStringMatcher(["STOP"])
        XCTAssertEqual(m.push("abc S"), "abc ")
        XCTAssertEqual(m.push("T"), "")
        XCTAssertEqual(m.push("O"), "")
        XCTAssertEqual(m.push("x"), "STOx")   // not a stop after all: released
        XCTAssertEqual(m.push("ST"), "")
        XCTAssertEqual(m.push("OP!"), "")
        XCTAssertEqual(m.matched, "STOP")
        XCTAssertEqual(m.push("more"), "")
        XCTAssertEqual(m.releasedBytes, 8)
    }

    func testEarliestOfSeveralStops() {
        XCTAssertEqual(run(["world", "lo w"], ["hello world"]).0, "hel")
        XCTAssertEqual(run(["zz", "b"], ["aab", "zz"]).0, "aa")
    }

    func testFinishReleasesHeldText() {
        XCTAssertEqual(run(["STOP"], ["the ST"]).0, "the ST")
        XCTAssertEqual(run(["STOP"], ["the ST"]).1, nil)
    }

    func testNoStopsPassesThrough() {
        var m = StopStringMatcher([])
        XCTAssertEqual(m.push("abc"), "abc")
        XCTAssertEqual(m.finish(), "")
    }

    func testMultiByteCharacters() {
        XCTAssertEqual(run(["ß😀"], ["Grüße ", "ß", "😀 x"]).0, "Grüße ")
        // A stop whose first character shares a lead byte with the text must not split a character.
        let (out, matched) = run(["é!"], ["café", "è", "é", "!"])
        XCTAssertEqual(out, "caféè")
        XCTAssertEqual(matched, "é!")
        XCTAssertEqual(run(["😀"], ["a😁b"]).0, "a😁b")
    }

    func testOverlappingPrefixes() {
        // "aab" inside "aaab": the held "aa" must still find the match that starts one byte later.
        XCTAssertEqual(run(["aab"], ["a", "a", "a", "b"]).0, "a")
        XCTAssertEqual(run(["abab"], ["ab", "ab", "c"]).0, "")
        XCTAssertEqual(run(["abac"], ["aba", "bac"]).0, "ab")
    }
}
