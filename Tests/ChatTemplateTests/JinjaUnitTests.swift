import Foundation
import XCTest
@testable import ChatTemplate

/// Expression and statement features, each against jinja2's output (scripts/make_chat_template_fixtures.py).
final class JinjaUnitTests: XCTestCase {
    func testUnitsMatchJinja2() throws {
        let data = try Fixtures.json("jinja_units.json")
        let units = try XCTUnwrap(data["units"].arrayValue)
        var passed = 0
        for u in units {
            let source = u["source"].stringValue!
            let label = source.debugDescription.prefix(120)
            var ctx: [String: JinjaValue] = [:]
            for (k, v) in u["context"].objectValue ?? JinjaObject() { ctx[k] = v }
            let expected = u["expected"].stringValue
            let expectedError = u["error"].stringValue
            let kind = u["error_kind"].stringValue
            do {
                var t = try ChatTemplate(source: source)
                t.now = { Fixtures.now }
                let out = try t.render(context: ctx)
                if let expected {
                    if out == expected { passed += 1 } else { XCTFail("\(label):\n\(Fixtures.firstDifference(out, expected))") }
                } else {
                    XCTFail("\(label): expected \(kind ?? "") error \(expectedError ?? "") but rendered \(out.debugDescription)")
                }
            } catch let e as ChatTemplateError {
                guard let expectedError else { XCTFail("\(label): unexpected error \(e)"); continue }
                switch (kind, e) {
                case ("syntax", .syntax):
                    passed += 1
                case ("raise", .raised(let m)):
                    if m == expectedError { passed += 1 } else { XCTFail("\(label): \(m.debugDescription) != \(expectedError.debugDescription)") }
                case ("other", .runtime(let m, _)):
                    if m == expectedError { passed += 1 } else { XCTFail("\(label): error message \(m.debugDescription) != jinja2's \(expectedError.debugDescription)") }
                default:
                    XCTFail("\(label): error \(e) does not match jinja2's \(kind ?? "?"): \(expectedError)")
                }
            }
        }
        print("jinja units: \(passed)/\(units.count) match jinja2")
    }
}
