import Foundation
import XCTest
@testable import Grammar

final class GrammarTests: XCTestCase {
    func matcher(_ schema: String) throws -> GrammarMatcher {
        GrammarMatcher(grammar: try JSONSchemaGrammar.grammar(schema: try JSONValue(parsing: schema)))
    }

    func accepts(_ m: GrammarMatcher, _ text: String) -> Bool {
        m.isAccepting(m.walk(m.initial, Array(text.utf8)))
    }

    func check(_ schema: String, valid: [String], invalid: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let m = try matcher(schema)
        for v in valid { XCTAssertTrue(accepts(m, v), "\(schema) should accept \(v)", file: file, line: line) }
        for v in invalid { XCTAssertFalse(accepts(m, v), "\(schema) should reject \(v)", file: file, line: line) }
    }

    func testBuilderRepetitionAndAlternatives() throws {
        let b = GrammarBuilder()
        let ab = b.add("ab", [[.text("a")], [.text("b")]])
        let root = b.add("root", [b.repeated([.rule(ab)], min: 2, max: 3) + [.text("!")]])
        let m = GrammarMatcher(grammar: try b.build(root: root))
        for s in ["ab!", "bb!", "aba!"] { XCTAssertTrue(accepts(m, s), s) }
        for s in ["a!", "abab!", "ab", "abc!"] { XCTAssertFalse(accepts(m, s), s) }
        // A prefix is alive but not accepting; after "!" nothing may follow.
        XCTAssertTrue(m.walk(m.initial, Array("ab".utf8)) >= 0)
        XCTAssertTrue(m.advance(Array("aba!".utf8)))
        XCTAssertTrue(m.isComplete)
        XCTAssertFalse(m.accepts([UInt8(ascii: "a")]))
    }

    func testUndefinedRuleIsAnError() {
        let b = GrammarBuilder()
        let x = b.declare("x")
        let root = b.add("root", [[.rule(x)]])
        XCTAssertThrowsError(try b.build(root: root))
    }

    func testScalars() throws {
        try check(#"{"type": "integer"}"#, valid: ["0", "-12", "42", "1234567890123456"],
                  invalid: ["01", "1.5", "", "-", "+1", "12345678901234567", " 42"])
        try check(#"{"type": "number"}"#, valid: ["0", "-1.25", "3e10", "2.5E-3"], invalid: ["1.", ".5", "1e", "NaN"])
        try check(#"{"type": "boolean"}"#, valid: ["true", "false"], invalid: ["True", "1"])
        try check(#"{"type": "null"}"#, valid: ["null"], invalid: ["nil", ""])
        try check(#"{"type": ["string", "null"]}"#, valid: [#""x""#, "null"], invalid: ["1"])
        try check(#"{"type": "integer", "minimum": 0}"#, valid: ["0", "7"], invalid: ["-1"])
        try check(#"{"type": "integer", "minimum": 1}"#, valid: ["1", "70"], invalid: ["0", "-1"])
    }

    func testStrings() throws {
        try check(#"{"type": "string"}"#,
                  valid: [#""""#, #""héllo wörld ✓ 🎉""#, #""a\"b\\c\n\u00e9""#],
                  invalid: ["\"a\nb\"", #""\x""#, #""abc"#, "\"\u{7F}\"", "\"\\u12\"", #""\ud800""#, #""\udc00x""#])
        try check(#"{"type": "string"}"#, valid: [#""\ud83d\ude00""#, #""\uE000\u00FF""#], invalid: [#""\ud83d\u0041""#])
        try check(#"{"type": "string", "minLength": 2, "maxLength": 3}"#, valid: [#""ab""#, #""abc""#, #""é✓""#],
                  invalid: [#""a""#, #""abcd""#])
        try check(#"{"type": "string", "format": "date"}"#, valid: [#""2026-12-05""#], invalid: [#""2026-13-05""#, #""26-12-05""#])
        try check(#"{"type": "string", "format": "date-time"}"#, valid: [#""2026-12-05T10:20:30Z""#, #""2026-12-05T23:59:59.5+01:00""#],
                  invalid: [#""2026-12-05 10:20:30Z""#])
        try check(#"{"type": "string", "format": "uuid"}"#, valid: [#""123e4567-e89b-12d3-a456-426614174000""#],
                  invalid: [#""123e4567e89b12d3a456426614174000""#])
        // Invalid UTF-8 is never produced: a lone continuation byte or an overlong form is refused.
        let m = try matcher(#"{"type": "string"}"#)
        XCTAssertFalse(m.isAccepting(m.walk(m.initial, [0x22, 0x80, 0x22])))
        XCTAssertFalse(m.isAccepting(m.walk(m.initial, [0x22, 0xC0, 0x80, 0x22])))
    }

    func testEnumConstAnyOf() throws {
        try check(#"{"enum": ["red", "green", 3, null]}"#, valid: [#""red""#, "3", "null"], invalid: [#""blue""#, "4"])
        try check(#"{"const": {"a": [1, "x"]}}"#, valid: [#"{"a":[1,"x"]}"#], invalid: [#"{"a": [1, "x"]}"#])
        try check(#"{"anyOf": [{"type": "integer"}, {"type": "array", "items": {"type": "boolean"}}]}"#,
                  valid: ["5", "[true, false]", "[]"], invalid: [#""5""#, "[1]"])
    }

    func testObjects() throws {
        let schema = #"""
        {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
         "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["name"], "additionalProperties": false}
        """#
        try check(schema,
                  valid: [#"{"name": "a"}"#, #"{"name":"a","age":3}"#, #"{ "name": "a", "tags": ["x", "y"] }"#,
                          "{\n  \"name\": \"a\",\n  \"age\": 3\n}",
                          #"{"name": "a", "age": 3, "tags": []}"#],
                  invalid: [#"{}"#, #"{"age": 3}"#, #"{"age": 3, "name": "a"}"#, #"{"name": "a",}"#,
                            #"{"name": "a", "other": 1}"#, #"{"name": "a" "age": 3}"#, "{\n\n\"name\": \"a\"}",
                            #"{"name": "a"} "#])
        // All optional: the empty object and any ordered subset.
        try check(#"{"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}"#,
                  valid: ["{}", #"{"a": 1}"#, #"{"b": 2}"#, #"{"a": 1, "b": 2}"#], invalid: [#"{"b": 2, "a": 1}"#, #"{,"b": 2}"#])
        // Free-form maps.
        try check(#"{"type": "object", "additionalProperties": {"type": "number"}}"#,
                  valid: ["{}", #"{"x": 1.5, "y": -2}"#], invalid: [#"{"x": "1"}"#])
        try check(#"{"type": "object"}"#, valid: [#"{"x": {"y": [1, null, "z"]}}"#], invalid: ["[]"])
    }

    func testArraysAndRefs() throws {
        try check(#"{"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3}"#,
                  valid: ["[1]", "[1, 2, 3]"], invalid: ["[]", "[1, 2, 3, 4]", "[1,]"])
        try check(#"{"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": false}"#,
                  valid: ["[]", #"["a"]"#, #"["a", 1]"#], invalid: [#"["a", 1, 2]"#, "[1]"])
        try check(#"{"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "integer"}, "minItems": 1}"#,
                  valid: [#"["a"]"#, #"["a", 1, 2]"#], invalid: ["[]", #"["a", "b"]"#])
        let tree = #"""
        {"$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"},
          "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["v"]}}, "$ref": "#/$defs/node"}
        """#
        try check(tree, valid: [#"{"v": 1}"#, #"{"v": 1, "kids": [{"v": 2, "kids": [{"v": 3}]}, {"v": 4}]}"#],
                  invalid: [#"{"v": 1, "kids": [{}]}"#])
    }

    func testUnsupportedKeywordsAreNamed() {
        for (schema, keyword) in [(#"{"type": "string", "pattern": "^a+$"}"#, "pattern"),
                                  (#"{"type": "number", "minimum": 3}"#, "minimum"),
                                  (#"{"type": "string", "format": "ipv4"}"#, "format"),
                                  (#"{"type": "object", "properties": {"a": {"type": "integer", "multipleOf": 2}}}"#, "multipleOf"),
                                  (#"{"$ref": "http://example.com/s.json"}"#, "$ref"),
                                  (#"{"type": "object", "required": ["x"]}"#, "required")] {
            XCTAssertThrowsError(try JSONSchemaGrammar.grammar(schema: try JSONValue(parsing: schema)), schema) { e in
                XCTAssertEqual((e as? SchemaError)?.keyword, keyword, "\(e)")
            }
        }
    }

    /// Random walks through a schema's grammar always end in a JSON text Foundation parses.
    func testRandomWalksProduceParsableJSON() throws {
        let schema = #"""
        {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string", "maxLength": 8},
         "score": {"type": "number"}, "ok": {"type": "boolean"}, "kind": {"enum": ["a", "b"]},
         "items": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": ["integer", "null"]}}}, "maxItems": 3},
         "meta": {"type": "object"}}, "required": ["id", "kind"]}
        """#
        let m = try matcher(schema)
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            var state = m.initial
            var out: [UInt8] = []
            var steps = 0
            while !(m.isAccepting(state) && (steps > 200 || Int.random(in: 0..<4, using: &rng) == 0)) {
                let options = (0...255).map(UInt8.init).filter { m.next(state, $0) >= 0 }
                if options.isEmpty { break }
                // Prefer closing characters as the walk gets long, so it ends.
                let closers = options.filter { "\"}]0123456789el".utf8.contains($0) }
                let pick = steps > 120 && !closers.isEmpty ? closers.randomElement(using: &rng)! : options.randomElement(using: &rng)!
                out.append(pick)
                state = m.next(state, pick)
                steps += 1
                if steps > 3000 { break }
            }
            guard m.isAccepting(state) else { continue }
            XCTAssertNoThrow(try JSONSerialization.jsonObject(with: Data(out)), String(decoding: out, as: UTF8.self))
        }
    }

    func testTrieMaskEqualsTokenByTokenCheck() throws {
        var vocab: [[UInt8]] = []
        let pieces = ["{", "}", "\"", "\":", " \"", "name", "na", "me", "\": \"", "1", "12", "0", "-", "true", "tr", "ue",
                      ",", ", \"", "age", "\n", "  ", "é", "\"}", "}}", "a", "ab", "", "[", "]"]
        for p in pieces { vocab.append(Array(p.utf8)) }
        vocab.append([0xC3])  // half of é
        let trie = TokenTrie(tokenBytes: vocab)
        let m = try matcher(#"{"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}"#)
        var state = m.initial
        for prefix in ["", "{", "{\"", "{\"na", "{\"name\": \"é", "{\"name\": \"x\", \"age\": 1"] {
            state = m.walk(m.initial, Array(prefix.utf8))
            XCTAssertGreaterThanOrEqual(state, 0, prefix)
            var viaTrie = Set<Int32>()
            trie.forEachAllowed(m, from: state) { viaTrie.insert($0) }
            let direct = Set(vocab.indices.filter { !vocab[$0].isEmpty && m.walk(state, vocab[$0]) >= 0 }.map(Int32.init))
            XCTAssertEqual(viaTrie, direct, prefix)
        }
    }
}
