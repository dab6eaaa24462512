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

extension BackendConformance {
    /// The backends under test: a name and a factory that makes a fresh instance, or nil when the backend is not
    /// available on this machine (its checks are then skipped with a note). A new backend plugs in with ONE line
    /// here, e.g. `("cuda", { CUDABackend.makeIfAvailable() }),`.
    public static let backends: [(name: String, make: @Sendable () -> (any ComputeBackend)?)] = [
        ("cpu", { CPUBackend(threads: 2) }),
    ]

    /// Every check, by name, in the order they run.
    public static let checks: [(name: String, run: @Sendable (BackendConformance) throws -> Void)] = [
        ("memory", { $0.checkMemory() }),
        ("embed", { try $0.checkEmbed() }),
        ("rmsNorm", { $0.checkRMSNorm() }),
        ("matmul", { try $0.checkMatmul() }),
        ("matmulGroup", { try $0.checkMatmulGroup() }),
        ("matmulHeads", { try $0.checkMatmulHeads() }),
        ("elementwise", { $0.checkElementwise() }),
        ("rope", { $0.checkRoPE() }),
        ("attention", { $0.checkAttention() }),
        ("moeSelect", { $0.checkMoESelect() }),
        ("expertExecutor", { try $0.checkExpertExecutor() }),
    ]
}
