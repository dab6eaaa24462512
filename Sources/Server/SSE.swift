import Foundation

/// Server-sent events as OpenAI writes them: `data: <json>\n\n` per event, then `data: [DONE]\n\n`.
public enum SSE {
    public static let done = "data: [DONE]\n\n"

    /// One event carrying `json` (which must be a single line: JSONEncoder output is).
    public static func event(_ json: Data) -> String {
        "data: " + String(decoding: json, as: UTF8.self) + "\n\n"
    }

    /// An event for any payload; multi-line payloads get one `data:` line each, as the SSE spec requires.
    public static func event(text: String) -> String {
        text.split(separator: "\n", omittingEmptySubsequences: false).map { "data: " + $0 }.joined(separator: "\n") + "\n\n"
    }

    /// Parses a stream of SSE bytes back into `data` payloads (for tests and `bench serve`). Returns the payloads
    /// of complete events and leaves an incomplete one in `buffer`.
    public static func parse(_ buffer: inout String) -> [String] {
        var out: [String] = []
        while let r = buffer.range(of: "\n\n") {
            let block = buffer[buffer.startIndex..<r.lowerBound]
            buffer.removeSubrange(buffer.startIndex..<r.upperBound)
            var data: [Substring] = []
            for line in block.split(separator: "\n", omittingEmptySubsequences: false) {
                if line.hasPrefix("data:") {
                    var v = line.dropFirst(5)
                    if v.first == " " { v = v.dropFirst() }
                    data.append(v)
                }
            }
            if !data.isEmpty { out.append(data.joined(separator: "\n")) }
        }
        return out
    }
}
