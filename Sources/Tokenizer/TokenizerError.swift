/// A tokenizer that cannot be built from a model's metadata: the message names the metadata key at fault.
public struct TokenizerError: Error, CustomStringConvertible, Sendable, Equatable {
    public let message: String

    public init(_ message: String) {
        self.message = message
    }

    public var description: String { "tokenizer: \(message)" }
}
