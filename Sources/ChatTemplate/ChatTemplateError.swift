/// Errors from parsing or rendering a chat template.
public enum ChatTemplateError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The template's source is not valid (at `line`/`column`, both 1-based).
    case syntax(message: String, line: Int, column: Int)
    /// The template called `raise_exception(message)`: `message` is its argument, verbatim. A server should
    /// answer the request with it (it says what is wrong with the conversation, e.g. roles not alternating).
    case raised(message: String)
    /// Evaluation failed (an undefined value used where jinja2 raises, a type error, a sandbox refusal, ...) at
    /// template `line` (1-based). `message` reads as jinja2's does where it can.
    case runtime(message: String, line: Int)
    /// The input data (e.g. JSON text) is not valid.
    case invalidInput(message: String)

    /// The message without location.
    public var message: String {
        switch self {
        case .syntax(let m, _, _), .raised(let m), .runtime(let m, _), .invalidInput(let m): return m
        }
    }

    public var description: String {
        switch self {
        case .syntax(let m, let l, let c): return "template syntax error at line \(l), column \(c): \(m)"
        case .raised(let m): return m
        case .runtime(let m, let l): return "template error at line \(l): \(m)"
        case .invalidInput(let m): return m
        }
    }
}

/// Thrown inside the interpreter; converted to `ChatTemplateError.runtime` with the current line.
struct RuntimeFailure: Error {
    let message: String
}
