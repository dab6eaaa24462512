import Foundation
import Quant

/// A weight as the loader found it, before any backend prepared it: its GGUF name, block type, ggml shape
/// (`[cols, rows]` or `[cols, rows, count]`) and its bytes in host memory (the file's mapping, or a buffer made
/// at load that `owner` keeps alive).
public struct WeightRef: @unchecked Sendable {
    public let name: String
    public let type: GGMLType
    /// ggml order: fastest-varying first.
    public let shape: [Int]
    public let data: UnsafeRawPointer
    public let owner: AnyObject?

    public init(name: String, type: GGMLType, shape: [Int], data: UnsafeRawPointer, owner: AnyObject? = nil) {
        self.name = name
        self.type = type
        self.shape = shape
        self.data = data
        self.owner = owner
    }

    /// Bytes of the whole tensor (nil when a row is not a whole number of blocks).
    public var byteCount: Int? {
        guard let first = shape.first, let row = type.byteCount(elements: first) else { return nil }
        return shape.dropFirst().reduce(row, *)
    }
}

/// Which device each weight lives on, by GGUF tensor-name rules: the first rule whose pattern matches the name
/// decides; a name no rule matches goes to `main`, the device that runs the model (its activations, KV cache and
/// every op). Only routed experts (`blk.N.ffn_{gate,up,down}_exps`) may live elsewhere: they run through an
/// `ExpertExecutor` of their own device (KTransformers' "experts on the CPU, the rest on the GPU").
///
/// Patterns are globs over the whole name: `*` any run of characters, `?` one character
/// (`blk.*.ffn_*_exps.weight`). As a flag: `--placement 'blk.*.ffn_*_exps.weight=cpu'`, rules separated by commas.
public struct Placement: Sendable, Equatable, CustomStringConvertible {
    public struct Rule: Sendable, Equatable {
        public var pattern: String
        public var device: Device
        public init(pattern: String, device: Device) {
            self.pattern = pattern
            self.device = device
        }
    }

    public var main: Device
    public var rules: [Rule]

    public init(main: Device = .cpu, rules: [Rule] = []) {
        self.main = main
        self.rules = rules
    }

    /// Everything on the CPU (the default).
    public static let cpu = Placement()

    /// Parses `PATTERN=DEVICE[,PATTERN=DEVICE...]` (devices: `cpu`, `cuda`, `cuda:N`).
    public init(main: Device, parsing text: String) throws {
        var rules: [Rule] = []
        for item in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !item.isEmpty {
            guard let eq = item.lastIndex(of: "="), eq != item.startIndex else {
                throw BackendError("placement rule '\(item)': expected PATTERN=DEVICE (e.g. 'blk.*.ffn_*_exps.weight=cpu')")
            }
            let name = String(item[item.index(after: eq)...])
            guard let device = Device(name: name) else {
                throw BackendError("placement rule '\(item)': unknown device '\(name)' (cpu, cuda, cuda:N)")
            }
            rules.append(Rule(pattern: String(item[..<eq]), device: device))
        }
        self.init(main: main, rules: rules)
    }

    /// The device of the tensor `name`.
    public func device(for name: String) -> Device {
        for r in rules where Placement.glob(r.pattern, matches: name) { return r.device }
        return main
    }

    /// Whether `name` is a routed-expert tensor (the only kind that may live off the main device).
    public static func isRoutedExpert(_ name: String) -> Bool {
        glob("blk.*.ffn_*_exps.*", matches: name)
    }

    /// Checks that every device named has a backend and that only routed experts leave the main device.
    /// `names` are the model's tensor names.
    public func validate(available: Set<Device>, names: [String]) throws {
        guard available.contains(main) else {
            throw BackendError("device \(main) is not available (available: \(available.map(\.description).sorted().joined(separator: ", ")))")
        }
        for r in rules where !available.contains(r.device) {
            throw BackendError("placement rule '\(r.pattern)=\(r.device)': device \(r.device) is not available")
        }
        for n in names {
            let d = device(for: n)
            if d != main && !Placement.isRoutedExpert(n) {
                throw BackendError("placement puts tensor '\(n)' on \(d), but only routed experts (blk.N.ffn_*_exps) may live off the main device \(main)")
            }
        }
    }

    public var description: String {
        rules.isEmpty ? "all on \(main)" : rules.map { "\($0.pattern)=\($0.device)" }.joined(separator: ",") + ", rest on \(main)"
    }

    /// Glob match over the whole string: `*` any run, `?` one character.
    public static func glob(_ pattern: String, matches name: String) -> Bool {
        let p = Array(pattern.utf8), s = Array(name.utf8)
        var pi = 0, si = 0, star = -1, mark = 0
        while si < s.count {
            if pi < p.count && (p[pi] == UInt8(ascii: "?") || p[pi] == s[si]) {
                pi += 1
                si += 1
            } else if pi < p.count && p[pi] == UInt8(ascii: "*") {
                star = pi
                mark = si
                pi += 1
            } else if star >= 0 {
                pi = star + 1
                mark += 1
                si = mark
            } else {
                return false
            }
        }
        while pi < p.count && p[pi] == UInt8(ascii: "*") { pi += 1 }
        return pi == p.count
    }
}
