import Foundation

/// How a model marks its reasoning: `<think>…</think>` before the answer, for both families. They differ in what
/// untagged output means (see `ReasoningParser`).
public enum ReasoningFormat: String, CaseIterable, Sendable {
    case deepseekR1 = "deepseek_r1"
    case qwen3

    /// Picks from a template source: contains "<think>" → .deepseekR1 if it also contains "｜Assistant｜" else .qwen3;
    /// else nil.
    public static func detect(template: String) -> ReasoningFormat? {
        guard template.contains("<think>") else { return nil }
        return template.contains("\u{FF5C}Assistant\u{FF5C}") ? .deepseekR1 : .qwen3
    }
}

public enum ReasoningEvent: Sendable, Equatable {
    case reasoning(String)
    case content(String)
}

/// Splits generated text, arriving in arbitrary deltas, into reasoning and content.
///
/// Text inside `<think>`…`</think>` is reasoning; the tags are dropped, and so are the newlines right after
/// `</think>`. The output may begin (after whitespace) with `<think>`, also when `startsInReasoning`. Otherwise:
/// - `startsInReasoning` (the prompt ended with `<think>`): everything up to `</think>` is reasoning;
/// - qwen3: the output is all content;
/// - deepseek_r1: everything before a `</think>` is reasoning (R1 templates put `<think>\n` in the prompt). Until
///   `</think>` shows up it is unknown whether the text is reasoning, so it is held back, and released as content
///   if generation ends without one. Servers should pass `startsInReasoning` when the prompt ends with `<think>`, so
///   that reasoning streams, and need no reasoning parser when it ends with `</think>` (thinking disabled).
/// Generation that ends inside reasoning leaves it all reasoning.
///
/// Like `ToolCallParser`, it works on UTF-8 bytes and decides only on the text itself, holding back no more than
/// could be the beginning of a tag, so any split into deltas gives the same reasoning and the same content as
/// `push(whole) + finish()`.
public struct ReasoningParser: Sendable {
    public let format: ReasoningFormat
    public let startsInReasoning: Bool
    /// Text not yet released.
    private var buffer: [UInt8] = []
    private var state: State = .start
    /// Where the next search for `</think>` resumes, in `.untagged`.
    private var searchFrom = 0
    private var events: [ReasoningEvent] = []

    private enum State: Sendable {
        /// Only whitespace, or whitespace and a prefix of `<think>`, so far.
        case start
        case reasoning
        /// deepseek_r1 without an opening tag: reasoning if a `</think>` follows, content if none does.
        case untagged
        /// Just after `</think>`: newlines are dropped.
        case afterReasoning
        case content
    }

    private static let open = Array("<think>".utf8)
    private static let close = Array("</think>".utf8)

    /// `startsInReasoning`: the prompt already ended with "<think>" (generation begins inside the reasoning).
    public init(format: ReasoningFormat, startsInReasoning: Bool) {
        self.format = format
        self.startsInReasoning = startsInReasoning
    }

    /// Feeds the next text delta; returns what can be released now.
    public mutating func push(_ text: String) -> [ReasoningEvent] {
        buffer.append(contentsOf: text.utf8)
        while step(final: false) {}
        return take()
    }

    /// End of generation: releases everything still held.
    public mutating func finish() -> [ReasoningEvent] {
        while step(final: true) {}
        return take()
    }

    /// Advances by one decision. Returns true when it should be called again, false when it needs more text.
    /// With `final`, every state ends by releasing the whole buffer.
    private mutating func step(final: Bool) -> Bool {
        switch state {
        case .start:
            let i = buffer.skippingWhitespace(from: 0)
            let match = i == buffer.count ? MarkerMatch.partial : buffer.match(Self.open, at: i)
            switch match {
            case .full:
                buffer.removeFirst(i + Self.open.count)  // the whitespace before the tag goes with it
                state = .reasoning
            case .partial:
                guard final else { return false }
                state = untaggedState
            case .mismatch:
                state = untaggedState
            }
            return true
        case .reasoning:
            if let at = buffer.firstIndex(of: Self.close, from: 0) {
                emit(.reasoning, upTo: at)
                buffer.removeFirst(Self.close.count)
                state = .afterReasoning
                return true
            }
            emit(.reasoning, upTo: final ? buffer.count : buffer.startOfPartialMatch(of: Self.close))
            return false
        case .untagged:
            if let at = buffer.firstIndex(of: Self.close, from: searchFrom) {
                emit(.reasoning, upTo: at)
                buffer.removeFirst(Self.close.count)
                state = .afterReasoning
                return true
            }
            if final {
                emit(.content, upTo: buffer.count)
            } else {
                searchFrom = max(0, buffer.count - Self.close.count + 1)
            }
            return false
        case .afterReasoning:
            let newlines = buffer.prefix { $0 == UInt8(ascii: "\n") || $0 == UInt8(ascii: "\r") }.count
            buffer.removeFirst(newlines)
            guard !buffer.isEmpty else { return false }
            state = .content
            return true
        case .content:
            emit(.content, upTo: buffer.count)
            return false
        }
    }

    /// Where output that does not open with `<think>` goes.
    private var untaggedState: State {
        if startsInReasoning { return .reasoning }
        return format == .qwen3 ? .content : .untagged
    }

    private enum Kind { case reasoning, content }

    /// Releases `buffer[..<end]` as `kind`, merged into the previous event when that is of the same kind.
    private mutating func emit(_ kind: Kind, upTo end: Int) {
        guard end > 0 else { return }
        let text = String(decoding: buffer[..<end], as: UTF8.self)
        buffer.removeFirst(end)
        switch (kind, events.last) {
        case (.reasoning, .reasoning(let previous)?): events[events.count - 1] = .reasoning(previous + text)
        case (.content, .content(let previous)?): events[events.count - 1] = .content(previous + text)
        case (.reasoning, _): events.append(.reasoning(text))
        case (.content, _): events.append(.content(text))
        }
    }

    private mutating func take() -> [ReasoningEvent] {
        defer { events = [] }
        return events
    }
}
