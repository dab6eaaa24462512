import Backend
import Foundation

/// The expectations the conformance checks make, recorded instead of asserted so that the same checks run under
/// XCTest (`Tests/BackendTests`, which turns each recorded failure into a test failure) and from the command line
/// on a machine without a Swift toolchain (`ktransformers devices --conformance`, the GPU machine's way to run them).
public enum Expect {
    public struct Failure: Sendable, CustomStringConvertible {
        public let message: String
        public let file: String
        public let line: Int
        public var description: String { "\((file as NSString).lastPathComponent):\(line): \(message)" }
    }

    private static let lock = NSLock()
    nonisolated(unsafe) private static var recorded: [Failure] = []

    /// Runs `body` and returns the failures it recorded (a thrown error counts as one).
    public static func collect(_ body: () throws -> Void) -> [Failure] {
        lock.lock()
        recorded = []
        lock.unlock()
        do { try body() } catch { fail("threw \(error)") }
        lock.lock()
        defer { recorded = []; lock.unlock() }
        return recorded
    }

    public static func fail(_ message: String = "", file: StaticString = #filePath, line: UInt = #line) {
        lock.lock()
        recorded.append(Failure(message: message, file: "\(file)", line: Int(line)))
        lock.unlock()
    }

    public static func that(_ condition: @autoclosure () throws -> Bool, _ message: @autoclosure () -> String = "",
                            file: StaticString = #filePath, line: UInt = #line) {
        do {
            if try !condition() { fail("expectation failed: \(message())", file: file, line: line) }
        } catch {
            fail("threw \(error): \(message())", file: file, line: line)
        }
    }

    public static func equal<T: Equatable>(_ a: @autoclosure () throws -> T, _ b: @autoclosure () throws -> T,
                                           _ message: @autoclosure () -> String = "",
                                           file: StaticString = #filePath, line: UInt = #line) {
        do {
            let (x, y) = (try a(), try b())
            if x != y { fail("(\(x)) is not equal to (\(y)) \(message())", file: file, line: line) }
        } catch {
            fail("threw \(error): \(message())", file: file, line: line)
        }
    }

    public static func lessOrEqual<T: Comparable>(_ a: T, _ b: T, _ message: @autoclosure () -> String = "",
                                                  file: StaticString = #filePath, line: UInt = #line) {
        if !(a <= b) { fail("(\(a)) is greater than (\(b)) \(message())", file: file, line: line) }
    }

    public static func isNil<T>(_ a: T?, _ message: @autoclosure () -> String = "",
                                file: StaticString = #filePath, line: UInt = #line) {
        if let a { fail("(\(a)) is not nil \(message())", file: file, line: line) }
    }

    public struct Missing: Error, CustomStringConvertible {
        public let description: String
    }

    public static func unwrap<T>(_ a: T?, _ message: @autoclosure () -> String = "",
                                 file: StaticString = #filePath, line: UInt = #line) throws -> T {
        guard let a else { throw Missing(description: "unexpectedly nil: \(message())") }
        return a
    }
}
