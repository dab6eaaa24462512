/// A model that cannot be loaded or run, with the file, tensor or parameter at fault.
public struct ModelError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}
