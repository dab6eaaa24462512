import Foundation

/// A parsed `tokenizer.chat_template`, rendered as Hugging Face transformers renders it: jinja2's sandboxed
/// environment with `trim_blocks=True`, `lstrip_blocks=True`, the loop-controls extension, transformers'
/// `{% generation %}` tag, `raise_exception`, `strftime_now`, and `tojson` as transformers defines it
/// (`json.dumps(x, ensure_ascii=False, indent=..., separators=..., sort_keys=...)`).
///
/// Parsing happens once, in `init`; `render` is thread-safe (each call has its own interpreter state).
public struct ChatTemplate: Sendable {
    public let source: String
    let nodes: [Node]
    /// The clock `strftime_now` reads (tests can fix it).
    public var now: @Sendable () -> Date = { Date() }

    /// Parses `source`; throws `ChatTemplateError.syntax` with the line and column of the problem.
    public init(source: String) throws {
        self.source = source
        var p = try Parser(source: source)
        nodes = try p.parseTemplate()
    }

    /// Renders a chat: `messages` (OpenAI-style `{role, content, ...}` objects), `add_generation_prompt`,
    /// `bos_token`, `eos_token`, plus `extra` variables (`tools`, `documents`, `enable_thinking`, `date_string`, ...).
    /// Throws `ChatTemplateError.raised` with `raise_exception`'s message verbatim, or `.runtime` for other failures.
    public func render(messages: [JinjaValue], addGenerationPrompt: Bool, bosToken: String, eosToken: String,
                       extra: [String: JinjaValue] = [:]) throws -> String
    {
        var ctx = extra
        ctx["messages"] = .array(messages)
        ctx["add_generation_prompt"] = .bool(addGenerationPrompt)
        ctx["bos_token"] = .string(bosToken)
        ctx["eos_token"] = .string(eosToken)
        return try render(context: ctx)
    }

    /// Renders with an arbitrary context. Values of `.undefined` are left out (so `is defined` is false for them).
    public func render(context: [String: JinjaValue]) throws -> String {
        let it = Interpreter()
        let globals = Scope(parent: nil, vars: Builtins.globals(it, now: now))
        var vars: [String: V] = [:]
        vars.reserveCapacity(context.count + 4)
        for (k, v) in context where v != .undefined { vars[k] = V(v) }
        let root = Scope(parent: globals, vars: vars)
        var out = ""
        out.reserveCapacity(source.utf8.count * 2)
        do {
            _ = try it.exec(nodes, root, &out)
        } catch let e as RaisedByTemplate {
            throw ChatTemplateError.raised(message: e.message)
        } catch let e as RuntimeFailure {
            throw ChatTemplateError.runtime(message: e.message, line: it.line)
        }
        return out
    }
}
