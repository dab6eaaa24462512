import Foundation
import HTTPTypes

/// An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}` with an HTTP status.
public struct APIError: Error, Sendable, Equatable, CustomStringConvertible {
    public var status: HTTPResponse.Status
    public var message: String
    public var type: String
    public var param: String?
    public var code: String?

    public init(status: HTTPResponse.Status, message: String, type: String = "invalid_request_error",
                param: String? = nil, code: String? = nil) {
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
    }

    public var description: String { "\(status.code) \(message)" }

    /// 400: a parameter is missing, of the wrong type or out of range.
    public static func invalid(_ message: String, param: String? = nil, code: String? = nil) -> APIError {
        APIError(status: .badRequest, message: message, param: param, code: code)
    }

    public static func modelNotFound(_ model: String, served: String) -> APIError {
        APIError(status: .notFound, message: "The model '\(model)' does not exist; this server serves '\(served)'.",
                 param: "model", code: "model_not_found")
    }

    public static func tooLarge(limit: Int) -> APIError {
        APIError(status: .contentTooLarge, message: "The request body is larger than \(limit) bytes (--max-body-bytes).",
                 code: "request_too_large")
    }

    public static let unauthorized = APIError(
        status: .unauthorized, message: "Missing or invalid API key: send 'Authorization: Bearer <key>'.",
        type: "authentication_error", code: "invalid_api_key")

    public static func overloaded(_ message: String) -> APIError {
        APIError(status: .serviceUnavailable, message: message, type: "server_error", code: "overloaded")
    }

    /// 503 while the server drains for a shutdown (and for what is still running when the drain ends).
    public static let shuttingDown = APIError(
        status: .serviceUnavailable, message: "The server is shutting down; retry on another replica or later.",
        type: "server_error", code: "shutting_down")

    public static func notFound(path: String) -> APIError {
        APIError(status: .notFound, message: "No route for \(path).", code: "not_found")
    }

    public static func internalError(_ message: String) -> APIError {
        APIError(status: .internalServerError, message: message, type: "server_error", code: "internal_error")
    }

    /// The JSON body (compact, one line).
    public var jsonBody: Data {
        var inner: [String: Any] = ["message": message, "type": type]
        inner["param"] = param ?? NSNull()
        inner["code"] = code ?? NSNull()
        return (try? JSONSerialization.data(withJSONObject: ["error": inner], options: [.sortedKeys])) ?? Data()
    }
}
