/// A weight or a request a backend cannot take, with the tensor or parameter at fault.
public struct BackendError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}
