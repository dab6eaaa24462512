import Backend
import XCTest

/// `Placement`: parsing the `--placement` rules, first-match lookup, the glob, and validation (pure logic, the same
/// for every backend).
final class PlacementTests: XCTestCase {
    func testParsesRulesAndMatchesFirst() throws {
        let p = try Placement(main: .gpu(0), parsing: "blk.*.ffn_*_exps.weight=cpu, output.weight=cuda")
        XCTAssertEqual(p.main, .gpu(0))
        XCTAssertEqual(p.rules, [Placement.Rule(pattern: "blk.*.ffn_*_exps.weight", device: .cpu),
                                 Placement.Rule(pattern: "output.weight", device: .gpu(0))])
        XCTAssertEqual(p.device(for: "blk.0.ffn_up_exps.weight"), .cpu)
        XCTAssertEqual(p.device(for: "blk.61.ffn_gate_exps.weight"), .cpu)
        XCTAssertEqual(p.device(for: "blk.3.ffn_up_shexp.weight"), .gpu(0))   // shared expert: no rule, main
        XCTAssertEqual(p.device(for: "output.weight"), .gpu(0))
        XCTAssertEqual(p.device(for: "token_embd.weight"), .gpu(0))             // no rule: main

        // The first matching rule decides; devices by their names; empty items are ignored.
        let q = try Placement(main: .cpu, parsing: "blk.0.*=cuda:1,, blk.*=GPU , *=cpu")
        XCTAssertEqual(q.rules.map(\.device), [.gpu(1), .gpu(0), .cpu])
        XCTAssertEqual(q.device(for: "blk.0.attn_q.weight"), .gpu(1))
        XCTAssertEqual(q.device(for: "blk.10.attn_q.weight"), .gpu(0))
        XCTAssertEqual(q.device(for: "output_norm.weight"), .cpu)
        XCTAssertEqual(try Placement(main: .cpu, parsing: "").rules, [])
        XCTAssertEqual(Placement.cpu.device(for: "anything"), .cpu)
    }

    func testGlob() {
        let cases: [(String, String, Bool)] = [
            ("*", "", true),
            ("*", "blk.0.attn_q.weight", true),
            ("blk.*.ffn_*_exps.weight", "blk.12.ffn_down_exps.weight", true),
            ("blk.*.ffn_*_exps.weight", "blk.12.ffn_down_exps.bias", false),
            ("blk.?.attn_q.weight", "blk.7.attn_q.weight", true),
            ("blk.?.attn_q.weight", "blk.17.attn_q.weight", false),     // ? is exactly one character
            ("output.weight", "output.weight", true),
            ("output", "output.weight", false),                          // whole string, not a prefix
            ("weight", "output.weight", false),                          // nor a suffix
            ("*weight", "output.weight", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("", "", true),
            ("", "x", false),
            ("**", "abc", true),
            ("a?", "a", false),
        ]
        for (pattern, name, expected) in cases {
            XCTAssertEqual(Placement.glob(pattern, matches: name), expected, "glob('\(pattern)', '\(name)')")
        }
        XCTAssertTrue(Placement.isRoutedExpert("blk.3.ffn_gate_exps.weight"))
        XCTAssertFalse(Placement.isRoutedExpert("blk.3.ffn_gate_shexp.weight"))
    }

    func testRejectsBadRules() {
        for text in ["nope", "x=tpu", "=cpu", "blk.*=cuda:x", "blk.*=cuda:-1", "a=cpu,b"] {
            XCTAssertThrowsError(try Placement(main: .cpu, parsing: text), "'\(text)' should not parse")
        }
    }

    func testValidate() throws {
        let names = ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_up_exps.weight",
                     "blk.0.ffn_down_exps.weight", "output.weight"]
        let both: Set<Device> = [.cpu, .gpu(0)]
        // Experts on the CPU, the rest on the GPU: fine.
        XCTAssertNoThrow(try Placement(main: .gpu(0), parsing: "blk.*.ffn_*_exps.weight=cpu").validate(available: both, names: names))
        XCTAssertNoThrow(try Placement.cpu.validate(available: [.cpu], names: names))
        // A non-expert tensor off the main device.
        XCTAssertThrowsError(try Placement(main: .gpu(0), parsing: "output.weight=cpu").validate(available: both, names: names))
        XCTAssertThrowsError(try Placement(main: .gpu(0), parsing: "blk.*=cpu").validate(available: both, names: names))
        // A rule that names a device with no backend, or a main device with none.
        XCTAssertThrowsError(try Placement(main: .gpu(0), parsing: "blk.*.ffn_*_exps.weight=cuda:1").validate(available: both, names: names))
        XCTAssertThrowsError(try Placement(main: .gpu(0), parsing: "").validate(available: [.cpu], names: names))
        // A rule for an unavailable device fails even when it matches nothing.
        XCTAssertThrowsError(try Placement(main: .cpu, parsing: "nothing.matches=cuda").validate(available: [.cpu], names: names))
    }
}
