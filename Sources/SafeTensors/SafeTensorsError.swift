/// Everything that can be wrong with a safetensors file, a checkpoint directory or its config, each naming the
/// file and, where there is one, the tensor or key.
public struct SafeTensorsError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let message: String

    public init(path: String, _ message: String) {
        self.path = path
        self.message = message
    }

    public var description: String { "\(path): \(message)" }
}
