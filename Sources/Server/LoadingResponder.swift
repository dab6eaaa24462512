import Foundation
import HTTPTypes
import Hummingbird
import NIOConcurrencyHelpers

/// The HTTP responder of `serve`, which binds its port before the model is loaded: while the model loads, `/health`
/// answers 503 `{"status": "loading", "progress": 0.42}` (so a router or an orchestrator waits for readiness) and
/// every other route a 503 JSON error (`model_loading`); once the server is ready every request goes to its
/// router.
public final class LoadingResponder: HTTPResponder, Sendable {
    public typealias Context = ServerContext
    private struct State {
        var responder: RouterResponder<ServerContext>?
        var progress = 0.0
    }
    private let state = NIOLockedValueBox(State())

    public init() {}

    /// Share of the model's weights loaded (0...1).
    public func setProgress(_ p: Double) {
        state.withLockedValue { $0.progress = min(1, max(0, p)) }
    }

    /// The server is ready: its router answers from now on.
    public func ready(_ server: OpenAIServer) {
        let r = server.makeRouter().buildResponder()
        state.withLockedValue { $0.responder = r }
    }

    public var isReady: Bool { state.withLockedValue { $0.responder != nil } }

    public func respond(to request: Request, context: ServerContext) async throws -> Response {
        let (responder, progress) = state.withLockedValue { ($0.responder, $0.progress) }
        if let responder { return try await responder.respond(to: request, context: context) }
        if request.uri.path == "/health" {
            let body = try JSONSerialization.data(withJSONObject: ["status": "loading", "progress": (progress * 1000).rounded() / 1000],
                                                  options: [.sortedKeys])
            return OpenAIServer.jsonResponse(body, status: .serviceUnavailable)
        }
        return APIError(status: .serviceUnavailable,
                        message: "The model is loading (\(Int(progress * 100))% done); retry shortly.",
                        type: "server_error", code: "model_loading").response
    }
}
