import Foundation
import XCTest
@testable import ChatTemplate

enum Fixtures {
    static var directory: URL {
        Bundle.module.resourceURL!.appendingPathComponent("Fixtures")
    }

    static func json(_ name: String) throws -> JinjaValue {
        let text = try String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)
        return try JinjaValue(jsonText: text)
    }

    static func template(_ stem: String) throws -> String {
        try String(contentsOf: directory.appendingPathComponent("templates/\(stem).jinja"), encoding: .utf8)
    }

    /// The fixed clock the Python script gives `strftime_now` (2025-01-15 10:30 local time).
    static let now: Date = {
        var c = DateComponents()
        c.year = 2025; c.month = 1; c.day = 15; c.hour = 10; c.minute = 30
        return Calendar.current.date(from: c)!
    }()

    /// Where two strings first differ, for readable failures.
    static func firstDifference(_ a: String, _ b: String) -> String {
        let x = Array(a.unicodeScalars), y = Array(b.unicodeScalars)
        var i = 0
        while i < x.count, i < y.count, x[i] == y[i] { i += 1 }
        func ctx(_ s: [Unicode.Scalar]) -> String {
            let lo = max(0, i - 40), hi = min(s.count, i + 40)
            var v = String.UnicodeScalarView(); v.append(contentsOf: s[lo..<hi])
            return String(v).debugDescription
        }
        return "first difference at scalar \(i) (lengths \(x.count) vs \(y.count)):\n  got:      \(ctx(x))\n  expected: \(ctx(y))"
    }
}

extension JinjaValue {
    var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    var boolValue: Bool? { if case .bool(let b) = self { return b }; return nil }
    var arrayValue: [JinjaValue]? { if case .array(let a) = self { return a }; return nil }
    var objectValue: JinjaObject? { if case .object(let o) = self { return o }; return nil }
}
