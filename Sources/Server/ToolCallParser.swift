import Foundation

/// The ways models write tool calls into their generated text (the names are vLLM's `--tool-call-parser` names).
///
/// - `hermes` (Qwen2.5/Qwen3, Hermes, QwQ): `<tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>`, one block
///   per call, possibly after some content.
/// - `llama3_json` (Llama 3.1-3.3): the whole output, after optional whitespace and `<|python_tag|>`, is
///   `{"name": "f", "parameters": {...}}`, several separated by `;`.
/// - `mistral`: `[TOOL_CALLS]` then a JSON array `[{"name": "f", "arguments": {...}, "id": "..."}]` (v0.3), or per
///   call `[TOOL_CALLS]name[ARGS]{...}` / `[TOOL_CALLS]name[CALL_ID]id[ARGS]{...}` (Small 3.2, Devstral, Magistral).
/// - `deepseek_v3` (V3, R1): `<｜tool▁calls▁begin｜>`, per call
///   `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>`, `<｜tool▁calls▁end｜>`.
/// - `deepseek_v31` (V3.1): as V3 but per call `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>`.
public enum ToolCallFormat: String, CaseIterable, Sendable {
    case hermes
    case llama3 = "llama3_json"
    case mistral
    case deepseekV3 = "deepseek_v3"
    case deepseekV31 = "deepseek_v31"

    /// The marker texts the format uses (the detokenizer must render these even when they are special tokens).
    public var markers: [String] {
        switch self {
        case .hermes: return [ToolMarker.hermesOpen, ToolMarker.hermesClose]
        case .llama3: return [ToolMarker.pythonTag]
        case .mistral: return [ToolMarker.mistralCalls, ToolMarker.mistralArgs, ToolMarker.mistralCallID]
        case .deepseekV3, .deepseekV31:
            return [ToolMarker.deepseekCallsBegin, ToolMarker.deepseekCallsEnd, ToolMarker.deepseekCallBegin,
                    ToolMarker.deepseekCallEnd, ToolMarker.deepseekSeparator]
        }
    }

    /// Picks the format from a chat template's source text (nil when the template shows no tool-call format):
    /// contains "<tool_call>" → hermes; "<｜tool▁sep｜>" with "function<｜tool▁sep｜>" → deepseek_v3, otherwise with
    /// "<｜tool▁sep｜>" → deepseek_v31; "[TOOL_CALLS]" → mistral; "<|python_tag|>" or ("\"parameters\"" and
    /// "ipython") → llama3_json.
    ///
    /// The V3/R1 templates build the call as `tool['type'] + '<｜tool▁sep｜>'`, so the literal
    /// "function<｜tool▁sep｜>" need not appear in them; their other sign is the ```json fence around the arguments,
    /// which V3.1's templates do not write. Either one picks deepseek_v3.
    public static func detect(template: String) -> ToolCallFormat? {
        if template.contains(ToolMarker.hermesOpen) { return .hermes }
        if template.contains(ToolMarker.deepseekSeparator) {
            if template.contains("function" + ToolMarker.deepseekSeparator) || template.contains("```json") {
                return .deepseekV3
            }
            return .deepseekV31
        }
        if template.contains(ToolMarker.mistralCalls) { return .mistral }
        if template.contains(ToolMarker.pythonTag)
            || (template.contains("\"parameters\"") && template.contains("ipython")) {
            return .llama3
        }
        return nil
    }
}

/// One tool call the model made.
public struct ParsedToolCall: Sendable, Equatable {
    /// Only when the model wrote one (mistral).
    public var id: String?
    public var name: String
    /// JSON text of the arguments object as the model wrote it (trimmed, key order kept), "{}" when absent.
    public var arguments: String

    public init(id: String? = nil, name: String, arguments: String) {
        self.id = id
        self.name = name
        self.arguments = arguments
    }
}

public enum ToolCallEvent: Sendable, Equatable {
    /// Plain text, in order.
    case content(String)
    /// A complete, parsed call; `index` counts calls from 0 in this response.
    case toolCall(index: Int, call: ParsedToolCall)
}

/// Splits generated text, arriving in arbitrary deltas, into content and tool calls.
///
/// The parser works on UTF-8 bytes. Everything it has not decided about stays in `buffer`, whose first byte is the
/// start of the element being parsed (content that might begin a marker, or a call block). Every decision depends
/// only on the text itself, never on where the deltas were cut: the parser waits whenever more text could change
/// the outcome. So any split of a text into deltas gives the same content and calls as `push(whole) + finish()`
/// (content may come in different pieces; their concatenation is the same).
///
/// Content next to a call is trimmed on the call's side: whitespace right before a call and right after one is
/// dropped (a whitespace-only stretch between or after calls disappears). Output without calls passes through
/// unchanged. A block that fails to parse (bad JSON, no name, unterminated at the end) comes out as content with
/// its original text.
public struct ToolCallParser: Sendable {
    public let format: ToolCallFormat
    private var buffer: [UInt8] = []
    private var state: State
    private var sink = ToolEventSink()
    /// Finds the end of the JSON value being read (llama3 objects, mistral arrays and arguments).
    private var matcher = BracketMatcher(start: 0)
    /// Where the next search for a closing marker resumes (earlier positions were searched already).
    private var searchFrom = 0
    /// DeepSeek: the text of the current tool-calls section not yet known to be calls (the begin marker and the
    /// whitespace after it); it becomes content if no call in the section parses.
    private var sectionPending: [UInt8] = []
    private var sectionHasCall = false

    private enum State: Sendable {
        /// Content, watching for the format's opening marker (hermes, mistral, deepseek).
        case text
        /// hermes: `buffer` starts with `<tool_call>`; looking for `</tool_call>`.
        case hermesBlock
        /// llama3: nothing but whitespace or a prefix of `<|python_tag|>` so far.
        case llamaStart
        /// llama3: reading the object that starts at `jsonStart` (the block itself starts at 0).
        case llamaObject(jsonStart: Int)
        /// llama3: after a call; `;` and another object may follow.
        case llamaSeparator
        /// Everything from here on is content (llama3 output that is not a call).
        case plain
        /// mistral: `buffer` starts with `[TOOL_CALLS]`; reading what follows up to the JSON.
        case mistralHeader
        /// mistral v0.3: reading the array of calls that starts at `start`.
        case mistralArray(start: Int)
        /// mistral v11+: reading the arguments object that starts at `start`.
        case mistralArguments(name: String, id: String?, start: Int)
        /// deepseek: inside the tool-calls section, between calls.
        case deepseekSection
        /// deepseek: `buffer` starts with `<｜tool▁call▁begin｜>`; looking for `<｜tool▁call▁end｜>`.
        case deepseekCall
    }

    public init(format: ToolCallFormat) {
        self.format = format
        state = format == .llama3 ? .llamaStart : .text
    }

    /// Whether any tool call was released so far (the server sets finish_reason "tool_calls").
    public var sawToolCall: Bool { sink.callCount > 0 }

    /// Feeds the next text delta; returns what can be released now (content is released as soon as it
    /// cannot be the beginning of a marker; a call is released when it is complete and parsed).
    public mutating func push(_ text: String) -> [ToolCallEvent] {
        buffer.append(contentsOf: text.utf8)
        while step(final: false) {}
        return sink.take()
    }

    /// End of generation: releases everything still held. A call that is incomplete or whose JSON does not parse
    /// is released as content with its original text (never dropped, never an error).
    public mutating func finish() -> [ToolCallEvent] {
        while step(final: true) {}
        sink.flush()
        return sink.take()
    }

    // MARK: - The state machine

    /// Advances by one decision. Returns true when it should be called again, false when it needs more text.
    /// With `final`, every state ends by releasing the whole buffer.
    private mutating func step(final: Bool) -> Bool {
        switch state {
        case .text: return stepText(final: final)
        case .plain:
            releaseAll()
            return false
        case .hermesBlock: return stepHermesBlock(final: final)
        case .llamaStart: return stepLlamaStart(final: final)
        case .llamaObject(let jsonStart): return stepLlamaObject(jsonStart: jsonStart, final: final)
        case .llamaSeparator: return stepLlamaSeparator(final: final)
        case .mistralHeader: return stepMistralHeader(final: final)
        case .mistralArray(let start): return stepMistralArray(start: start, final: final)
        case .mistralArguments(let name, let id, let start):
            return stepMistralArguments(name: name, id: id, start: start, final: final)
        case .deepseekSection: return stepDeepSeekSection(final: final)
        case .deepseekCall: return stepDeepSeekCall(final: final)
        }
    }

    private mutating func consume(_ count: Int) {
        buffer.removeFirst(count)
    }

    /// Releases `buffer[..<end]` as content.
    private mutating func release(upTo end: Int) {
        sink.content(buffer[..<end])
        consume(end)
    }

    private mutating func releaseAll() {
        sink.content(buffer[...])
        buffer.removeAll(keepingCapacity: true)
    }

    private mutating func stepText(final: Bool) -> Bool {
        let open: [UInt8]
        switch format {
        case .hermes: open = ByteMarker.hermesOpen
        case .mistral: open = ByteMarker.mistralCalls
        case .deepseekV3, .deepseekV31: open = ByteMarker.deepseekCallsBegin
        case .llama3:
            state = .plain
            return true
        }
        guard let at = buffer.firstIndex(of: open, from: 0) else {
            // Hold back a tail that could still grow into the marker.
            release(upTo: final ? buffer.count : buffer.startOfPartialMatch(of: open))
            return false
        }
        release(upTo: at)
        switch format {
        case .hermes:
            state = .hermesBlock
            searchFrom = open.count
        case .mistral:
            state = .mistralHeader
        default:
            sectionPending = open
            sectionHasCall = false
            consume(open.count)
            state = .deepseekSection
        }
        return true
    }

    // MARK: hermes

    private mutating func stepHermesBlock(final: Bool) -> Bool {
        let open = ByteMarker.hermesOpen, close = ByteMarker.hermesClose
        guard let at = buffer.firstIndex(of: close, from: searchFrom) else {
            if final {
                releaseAll()  // unterminated block
                state = .text
                return false
            }
            searchFrom = max(open.count, buffer.count - close.count + 1)
            return false
        }
        let end = at + close.count
        let body = Array(buffer[open.count..<at])
        if let call = JSONToolCall.parse(object: body, argumentKeys: ["arguments", "parameters"],
                                         requireArguments: false, readID: false) {
            sink.call(call)
            consume(end)
        } else {
            release(upTo: end)
        }
        state = .text
        return true
    }

    // MARK: llama3

    private mutating func stepLlamaStart(final: Bool) -> Bool {
        let i = buffer.skippingWhitespace(from: 0)
        if i == buffer.count {
            if final { state = .plain }
            return final
        }
        if buffer[i] == UInt8(ascii: "{") {
            beginLlamaObject(at: i)
            return true
        }
        switch buffer.match(ByteMarker.pythonTag, at: i) {
        case .mismatch:
            state = .plain
            return true
        case .partial:
            if final { state = .plain }
            return final
        case .full:
            let j = buffer.skippingWhitespace(from: i + ByteMarker.pythonTag.count)
            if j == buffer.count {
                if final { state = .plain }
                return final
            }
            if buffer[j] == UInt8(ascii: "{") {
                beginLlamaObject(at: j)
            } else {
                state = .plain  // e.g. a built-in tool's Python call: not JSON, so content
            }
            return true
        }
    }

    private mutating func beginLlamaObject(at jsonStart: Int) {
        matcher = BracketMatcher(start: jsonStart)
        state = .llamaObject(jsonStart: jsonStart)
    }

    /// The block runs from the start of the buffer (leading whitespace and python tag included), so output that
    /// is not a call comes out as content exactly as written.
    private mutating func stepLlamaObject(jsonStart: Int, final: Bool) -> Bool {
        guard let last = matcher.scan(buffer) else {
            if final { state = .plain }
            return final
        }
        let json = Array(buffer[jsonStart...last])
        // Unlike the other formats a llama3 call must name its arguments: a JSON answer that merely has a "name"
        // field is not a call.
        if let call = JSONToolCall.parse(object: json, argumentKeys: ["parameters", "arguments"],
                                         requireArguments: true, readID: false) {
            sink.call(call)
            consume(last + 1)
            state = .llamaSeparator
        } else {
            state = .plain  // not a call, so not a list of calls either: the rest is content as written
        }
        return true
    }

    private mutating func stepLlamaSeparator(final: Bool) -> Bool {
        let i = buffer.skippingWhitespace(from: 0)
        if i == buffer.count {
            if final { state = .plain }
            return final
        }
        guard buffer[i] == UInt8(ascii: ";") else {
            state = .plain  // text after the calls
            return true
        }
        let j = buffer.skippingWhitespace(from: i + 1)
        if j == buffer.count {
            if final { state = .plain }
            return final
        }
        guard buffer[j] == UInt8(ascii: "{") else {
            state = .plain
            return true
        }
        consume(j)  // the separator goes
        beginLlamaObject(at: 0)
        return true
    }

    // MARK: mistral

    private enum MistralHeader {
        case needMore
        /// Not a call: the text before `at` is content, scanning resumes at `at`.
        case malformed(at: Int)
        case array(start: Int)
        case arguments(name: String, id: String?, start: Int)
    }

    /// Reads `[TOOL_CALLS]` and what follows up to the opening bracket of the JSON.
    private func mistralHeader() -> MistralHeader {
        var i = buffer.skippingWhitespace(from: ByteMarker.mistralCalls.count)
        guard i < buffer.count else { return .needMore }
        switch buffer.match(ByteMarker.mistralCalls, at: i) {
        case .full: return .malformed(at: i)  // an empty `[TOOL_CALLS]`; the next one starts over
        case .partial: return .needMore
        case .mismatch: break
        }
        if buffer[i] == UInt8(ascii: "[") { return .array(start: i) }
        let nameStart = i
        while i < buffer.count, Self.isNameByte(buffer[i]) { i += 1 }
        guard i < buffer.count else { return .needMore }
        guard i > nameStart else { return .malformed(at: nameStart) }
        let name = String(decoding: buffer[nameStart..<i], as: UTF8.self)
        var id: String?
        switch buffer.match(ByteMarker.mistralCallID, at: i) {
        case .partial: return .needMore
        case .mismatch: break
        case .full:
            let idStart = i + ByteMarker.mistralCallID.count
            i = idStart
            while i < buffer.count, Self.isNameByte(buffer[i]) { i += 1 }
            guard i < buffer.count else { return .needMore }
            guard i > idStart else { return .malformed(at: idStart) }
            id = String(decoding: buffer[idStart..<i], as: UTF8.self)
        }
        switch buffer.match(ByteMarker.mistralArgs, at: i) {
        case .partial: return .needMore
        case .mismatch: break  // `name{...}`: the arguments marker rendered as nothing
        case .full:
            i = buffer.skippingWhitespace(from: i + ByteMarker.mistralArgs.count)
            guard i < buffer.count else { return .needMore }
        }
        guard buffer[i] == UInt8(ascii: "{") else { return .malformed(at: i) }
        return .arguments(name: name, id: id, start: i)
    }

    private static func isNameByte(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "-"), UInt8(ascii: "."):
            return true
        default:
            return false
        }
    }

    private mutating func stepMistralHeader(final: Bool) -> Bool {
        switch mistralHeader() {
        case .needMore:
            if final {
                releaseAll()
                state = .text
            }
            return false
        case .malformed(let at):
            release(upTo: at)
            state = .text
        case .array(let start):
            matcher = BracketMatcher(start: start)
            state = .mistralArray(start: start)
        case .arguments(let name, let id, let start):
            matcher = BracketMatcher(start: start)
            state = .mistralArguments(name: name, id: id, start: start)
        }
        return true
    }

    private mutating func stepMistralArray(start: Int, final: Bool) -> Bool {
        guard let last = matcher.scan(buffer) else {
            if final {
                releaseAll()
                state = .text
            }
            return false
        }
        if let calls = JSONToolCall.parse(array: Array(buffer[start...last])) {
            for call in calls { sink.call(call) }
            consume(last + 1)
        } else {
            release(upTo: last + 1)
        }
        state = .text
        return true
    }

    private mutating func stepMistralArguments(name: String, id: String?, start: Int, final: Bool) -> Bool {
        guard let last = matcher.scan(buffer) else {
            if final {
                releaseAll()
                state = .text
            }
            return false
        }
        let arguments = Array(buffer[start...last])
        if ToolJSON.isObject(arguments) {
            sink.call(ParsedToolCall(id: id, name: name, arguments: String(decoding: arguments, as: UTF8.self)))
            consume(last + 1)
        } else {
            release(upTo: last + 1)
        }
        state = .text
        return true
    }

    // MARK: deepseek

    /// Gives back the section text held so far as content (nothing was a call yet) and carries on as content.
    private mutating func abandonSection() {
        sink.content(sectionPending[...])
        sectionPending = []
        sectionHasCall = false
        state = .text
    }

    private mutating func stepDeepSeekSection(final: Bool) -> Bool {
        let i = buffer.skippingWhitespace(from: 0)
        if !sectionHasCall { sectionPending += buffer[..<i] }
        consume(i)
        if buffer.isEmpty {
            if final { abandonSection() }
            return false
        }
        let callBegin = buffer.match(ByteMarker.deepseekCallBegin, at: 0)
        let sectionEnd = buffer.match(ByteMarker.deepseekCallsEnd, at: 0)
        if callBegin == .full {
            state = .deepseekCall
            searchFrom = ByteMarker.deepseekCallBegin.count
            return true
        }
        if sectionEnd == .full {
            if !sectionHasCall { sectionPending += ByteMarker.deepseekCallsEnd }
            consume(ByteMarker.deepseekCallsEnd.count)
            abandonSection()  // releases the whole section as content when no call in it parsed
            return true
        }
        if callBegin == .partial || sectionEnd == .partial {
            if final {
                abandonSection()
                return true
            }
            return false
        }
        abandonSection()  // unexpected text inside the section: it is content
        return true
    }

    private mutating func stepDeepSeekCall(final: Bool) -> Bool {
        let begin = ByteMarker.deepseekCallBegin, end = ByteMarker.deepseekCallEnd
        guard let at = buffer.firstIndex(of: end, from: searchFrom) else {
            if final {
                abandonSection()
                return true  // .text releases the unterminated call
            }
            searchFrom = max(begin.count, buffer.count - end.count + 1)
            return false
        }
        let blockEnd = at + end.count
        let body = Array(buffer[begin.count..<at])
        let call = format == .deepseekV3 ? Self.parseDeepSeekV3(body) : Self.parseDeepSeekV31(body)
        if let call {
            sectionPending = []
            sectionHasCall = true
            sink.call(call)
            consume(blockEnd)
        } else {
            sink.content(sectionPending[...])
            sectionPending = []
            release(upTo: blockEnd)
        }
        state = .deepseekSection
        return true
    }

    /// `TYPE<｜tool▁sep｜>NAME\n```json\nARGS\n```` (the fence is optional here).
    private static func parseDeepSeekV3(_ body: [UInt8]) -> ParsedToolCall? {
        guard let sep = body.firstIndex(of: ByteMarker.deepseekSeparator, from: 0) else { return nil }
        let rest = Array(body[(sep + ByteMarker.deepseekSeparator.count)...])
        guard let newline = rest.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
        let name = String(decoding: rest[..<newline], as: UTF8.self).trimmingCharacters(in: .whitespaces)
        guard !name.isEmpty else { return nil }
        var arguments = rest[(newline + 1)...].trimmingWhitespace()
        let fenceJSON = Array("```json".utf8), fence = Array("```".utf8)
        if arguments.starts(with: fenceJSON) {
            arguments = arguments.dropFirst(fenceJSON.count)
        } else if arguments.starts(with: fence) {
            arguments = arguments.dropFirst(fence.count)
        }
        if arguments.reversed().starts(with: fence.reversed()) { arguments = arguments.dropLast(fence.count) }
        let json = Array(arguments.trimmingWhitespace())
        guard ToolJSON.isObject(json) else { return nil }
        return ParsedToolCall(name: name, arguments: String(decoding: json, as: UTF8.self))
    }

    /// `NAME<｜tool▁sep｜>ARGS`.
    private static func parseDeepSeekV31(_ body: [UInt8]) -> ParsedToolCall? {
        guard let sep = body.firstIndex(of: ByteMarker.deepseekSeparator, from: 0) else { return nil }
        let name = String(decoding: body[..<sep].trimmingWhitespace(), as: UTF8.self)
        let json = Array(body[(sep + ByteMarker.deepseekSeparator.count)...].trimmingWhitespace())
        guard !name.isEmpty, ToolJSON.isObject(json) else { return nil }
        return ParsedToolCall(name: name, arguments: String(decoding: json, as: UTF8.self))
    }
}

// MARK: - Markers

/// The marker texts of the tool-call formats.
private enum ToolMarker {
    static let hermesOpen = "<tool_call>"
    static let hermesClose = "</tool_call>"
    static let pythonTag = "<|python_tag|>"
    static let mistralCalls = "[TOOL_CALLS]"
    static let mistralArgs = "[ARGS]"
    static let mistralCallID = "[CALL_ID]"
    // U+FF5C FULLWIDTH VERTICAL LINE and U+2581 LOWER ONE EIGHTH BLOCK.
    static let deepseekCallsBegin = "<\u{FF5C}tool\u{2581}calls\u{2581}begin\u{FF5C}>"
    static let deepseekCallsEnd = "<\u{FF5C}tool\u{2581}calls\u{2581}end\u{FF5C}>"
    static let deepseekCallBegin = "<\u{FF5C}tool\u{2581}call\u{2581}begin\u{FF5C}>"
    static let deepseekCallEnd = "<\u{FF5C}tool\u{2581}call\u{2581}end\u{FF5C}>"
    static let deepseekSeparator = "<\u{FF5C}tool\u{2581}sep\u{FF5C}>"
}

/// The markers as UTF-8, which is what the parser matches on.
private enum ByteMarker {
    static let hermesOpen = Array(ToolMarker.hermesOpen.utf8)
    static let hermesClose = Array(ToolMarker.hermesClose.utf8)
    static let pythonTag = Array(ToolMarker.pythonTag.utf8)
    static let mistralCalls = Array(ToolMarker.mistralCalls.utf8)
    static let mistralArgs = Array(ToolMarker.mistralArgs.utf8)
    static let mistralCallID = Array(ToolMarker.mistralCallID.utf8)
    static let deepseekCallsBegin = Array(ToolMarker.deepseekCallsBegin.utf8)
    static let deepseekCallsEnd = Array(ToolMarker.deepseekCallsEnd.utf8)
    static let deepseekCallBegin = Array(ToolMarker.deepseekCallBegin.utf8)
    static let deepseekCallEnd = Array(ToolMarker.deepseekCallEnd.utf8)
    static let deepseekSeparator = Array(ToolMarker.deepseekSeparator.utf8)
}

// MARK: - Events

/// Collects the events of one push and applies the whitespace rule around calls: whitespace that ends the content
/// before a call, or starts the content after one, is dropped. Whitespace at the end of the content so far is held
/// until it is known which.
private struct ToolEventSink: Sendable {
    private(set) var callCount = 0
    private var events: [ToolCallEvent] = []
    private var heldWhitespace: [UInt8] = []
    /// A call came last and no content has followed it yet.
    private var afterCall = false

    mutating func content(_ bytes: ArraySlice<UInt8>) {
        var text = bytes
        if afterCall {
            text = text.drop(while: MarkerSearch.isWhitespace)
            if text.isEmpty { return }
            afterCall = false
        }
        guard let last = text.lastIndex(where: { !MarkerSearch.isWhitespace($0) }) else {
            heldWhitespace += text
            return
        }
        let body = heldWhitespace + text[...last]
        heldWhitespace = Array(text[(last + 1)...])
        let string = String(decoding: body, as: UTF8.self)
        if case .content(let previous)? = events.last {
            events[events.count - 1] = .content(previous + string)
        } else {
            events.append(.content(string))
        }
    }

    mutating func call(_ call: ParsedToolCall) {
        heldWhitespace = []
        afterCall = true
        events.append(.toolCall(index: callCount, call: call))
        callCount += 1
    }

    /// End of text: whitespace held at the end is content after all (it was not followed by a call).
    mutating func flush() {
        guard !heldWhitespace.isEmpty else { return }
        let held = heldWhitespace
        heldWhitespace = []
        let string = String(decoding: held, as: UTF8.self)
        if case .content(let previous)? = events.last {
            events[events.count - 1] = .content(previous + string)
        } else {
            events.append(.content(string))
        }
    }

    mutating func take() -> [ToolCallEvent] {
        defer { events = [] }
        return events
    }
}

// MARK: - JSON

/// Finds where a JSON value that starts with `{` or `[` ends, incrementally: call `scan` again after more bytes
/// arrive and it carries on where it stopped. It counts brackets outside strings and does not check the syntax
/// (JSONSerialization does that once the value is complete).
private struct BracketMatcher: Sendable {
    private var position: Int
    private var depth = 0
    private var inString = false
    private var escaped = false

    /// `start`: the index of the opening bracket.
    init(start: Int) {
        position = start
    }

    /// The index of the bracket that closes the value, or nil when `bytes` ends first.
    mutating func scan(_ bytes: [UInt8]) -> Int? {
        while position < bytes.count {
            let c = bytes[position]
            if inString {
                if escaped {
                    escaped = false
                } else if c == UInt8(ascii: "\\") {
                    escaped = true
                } else if c == UInt8(ascii: "\"") {
                    inString = false
                }
            } else {
                switch c {
                case UInt8(ascii: "\""): inString = true
                case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    depth -= 1
                    if depth <= 0 { return position }
                default: break
                }
            }
            position += 1
        }
        return nil
    }
}

/// Validation with JSONSerialization, and the byte ranges of an object's members (which JSONSerialization does not
/// give) so that arguments can be passed on exactly as written.
private enum ToolJSON {
    static func parse(_ bytes: [UInt8]) -> Any? {
        try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])
    }

    static func isObject(_ bytes: [UInt8]) -> Bool {
        parse(bytes) is [String: Any]
    }

    /// The members of the (valid) JSON object in `bytes`: each key, decoded, with the range of its value.
    static func members(ofObject bytes: [UInt8]) -> [(key: String, value: Range<Int>)]? {
        var members: [(key: String, value: Range<Int>)] = []
        var i = bytes.skippingWhitespace(from: 0)
        guard i < bytes.count, bytes[i] == UInt8(ascii: "{") else { return nil }
        i = bytes.skippingWhitespace(from: i + 1)
        if i < bytes.count, bytes[i] == UInt8(ascii: "}") { return members }
        while i < bytes.count {
            guard bytes[i] == UInt8(ascii: "\""), let keyEnd = endOfString(bytes, at: i),
                  let key = parse(Array(bytes[i..<keyEnd])) as? String else { return nil }
            i = bytes.skippingWhitespace(from: keyEnd)
            guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { return nil }
            i = bytes.skippingWhitespace(from: i + 1)
            guard let valueEnd = endOfValue(bytes, at: i) else { return nil }
            members.append((key, i..<valueEnd))
            i = bytes.skippingWhitespace(from: valueEnd)
            guard i < bytes.count else { return nil }
            if bytes[i] == UInt8(ascii: "}") { return members }
            guard bytes[i] == UInt8(ascii: ",") else { return nil }
            i = bytes.skippingWhitespace(from: i + 1)
        }
        return nil
    }

    /// The ranges of the elements of the (valid) JSON array in `bytes`.
    static func elements(ofArray bytes: [UInt8]) -> [Range<Int>]? {
        var elements: [Range<Int>] = []
        var i = bytes.skippingWhitespace(from: 0)
        guard i < bytes.count, bytes[i] == UInt8(ascii: "[") else { return nil }
        i = bytes.skippingWhitespace(from: i + 1)
        if i < bytes.count, bytes[i] == UInt8(ascii: "]") { return elements }
        while i < bytes.count {
            guard let end = endOfValue(bytes, at: i) else { return nil }
            elements.append(i..<end)
            i = bytes.skippingWhitespace(from: end)
            guard i < bytes.count else { return nil }
            if bytes[i] == UInt8(ascii: "]") { return elements }
            guard bytes[i] == UInt8(ascii: ",") else { return nil }
            i = bytes.skippingWhitespace(from: i + 1)
        }
        return nil
    }

    /// Index just past the string that starts (with its quote) at `start`.
    private static func endOfString(_ bytes: [UInt8], at start: Int) -> Int? {
        var i = start + 1
        while i < bytes.count {
            switch bytes[i] {
            case UInt8(ascii: "\\"): i += 2
            case UInt8(ascii: "\""): return i + 1
            default: i += 1
            }
        }
        return nil
    }

    /// Index just past the value that starts at `start`.
    private static func endOfValue(_ bytes: [UInt8], at start: Int) -> Int? {
        guard start < bytes.count else { return nil }
        switch bytes[start] {
        case UInt8(ascii: "\""):
            return endOfString(bytes, at: start)
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            var matcher = BracketMatcher(start: start)
            return matcher.scan(bytes).map { $0 + 1 }
        default:  // number, true, false, null
            var i = start
            while i < bytes.count, !MarkerSearch.isWhitespace(bytes[i]),
                  ![UInt8(ascii: ","), UInt8(ascii: "}"), UInt8(ascii: "]")].contains(bytes[i]) {
                i += 1
            }
            return i
        }
    }
}

/// Reading a call written as a JSON object (`{"name": ..., "arguments": {...}}`).
private enum JSONToolCall {
    /// The call in `bytes`, or nil when it is not valid JSON, has no name, or has arguments that are not an object
    /// (nor a string holding one). Arguments under the first of `argumentKeys` present are used; with none present
    /// the call has "{}", or is rejected when `requireArguments`.
    static func parse(object bytes: [UInt8], argumentKeys: [String], requireArguments: Bool,
                      readID: Bool) -> ParsedToolCall? {
        let bytes = Array(bytes[...].trimmingWhitespace())
        guard let object = ToolJSON.parse(bytes) as? [String: Any],
              let name = object["name"] as? String,
              !name.trimmingCharacters(in: .whitespaces).isEmpty else { return nil }
        let id = readID ? object["id"] as? String : nil
        guard let key = argumentKeys.first(where: { object[$0] != nil && !(object[$0] is NSNull) }) else {
            return requireArguments ? nil : ParsedToolCall(id: id, name: name, arguments: "{}")
        }
        if object[key] is [String: Any] {
            // The text as written (key order kept); the last member wins, as in JSONSerialization.
            guard let range = ToolJSON.members(ofObject: bytes)?.last(where: { $0.key == key })?.value else {
                return nil
            }
            return ParsedToolCall(id: id, name: name, arguments: String(decoding: bytes[range], as: UTF8.self))
        }
        if let string = object[key] as? String {
            // Arguments given as a string holding JSON: pass on the decoded string.
            let text = string.trimmingCharacters(in: .whitespacesAndNewlines)
            guard ToolJSON.isObject(Array(text.utf8)) else { return nil }
            return ParsedToolCall(id: id, name: name, arguments: text)
        }
        return nil
    }

    /// The calls in a JSON array of call objects (mistral v0.3); nil if any element is not a call, or none is.
    static func parse(array bytes: [UInt8]) -> [ParsedToolCall]? {
        guard ToolJSON.parse(bytes) is [Any], let ranges = ToolJSON.elements(ofArray: bytes),
              !ranges.isEmpty else { return nil }
        var calls: [ParsedToolCall] = []
        for range in ranges {
            guard let call = parse(object: Array(bytes[range]), argumentKeys: ["arguments", "parameters"],
                                   requireArguments: false, readID: true) else { return nil }
            calls.append(call)
        }
        return calls
    }
}

// MARK: - Byte search

/// How the bytes at a position compare with a marker.
enum MarkerMatch: Sendable, Equatable {
    /// The whole marker is there.
    case full
    /// The bytes end before the marker does, and agree with it so far.
    case partial
    case mismatch
}

/// Byte-level helpers shared by the streaming parsers.
enum MarkerSearch {
    static func isWhitespace(_ c: UInt8) -> Bool {
        c == UInt8(ascii: " ") || c == UInt8(ascii: "\n") || c == UInt8(ascii: "\t") || c == UInt8(ascii: "\r")
    }
}

extension Array where Element == UInt8 {
    /// The first index at or after `from` where `marker` occurs in full.
    func firstIndex(of marker: [UInt8], from: Int) -> Int? {
        guard !marker.isEmpty, count >= marker.count else { return nil }
        var i = Swift.max(from, 0)
        while i <= count - marker.count {
            if self[i] == marker[0], match(marker, at: i) == .full { return i }
            i += 1
        }
        return nil
    }

    func match(_ marker: [UInt8], at start: Int) -> MarkerMatch {
        var k = 0
        while k < marker.count {
            if start + k == count { return .partial }
            if self[start + k] != marker[k] { return .mismatch }
            k += 1
        }
        return .full
    }

    /// Where the longest tail that is a proper prefix of `marker` begins (`count` if there is none): the bytes that
    /// must be held back because the marker may be completed by the next delta.
    func startOfPartialMatch(of marker: [UInt8]) -> Int {
        let longest = Swift.min(marker.count - 1, count)
        if longest <= 0 { return count }
        for length in stride(from: longest, to: 0, by: -1) where match(marker, at: count - length) == .partial {
            return count - length
        }
        return count
    }

    func skippingWhitespace(from start: Int) -> Int {
        var i = start
        while i < count, MarkerSearch.isWhitespace(self[i]) { i += 1 }
        return i
    }
}

extension ArraySlice where Element == UInt8 {
    func trimmingWhitespace() -> ArraySlice<UInt8> {
        guard let first = firstIndex(where: { !MarkerSearch.isWhitespace($0) }),
              let last = lastIndex(where: { !MarkerSearch.isWhitespace($0) }) else { return self[endIndex...] }
        return self[first...last]
    }
}
