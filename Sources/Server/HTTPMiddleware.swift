import Foundation
import HTTPTypes
import Hummingbird
import Logging

extension HTTPField.Name {
    static let requestID = HTTPField.Name("X-Request-Id")!
    static let accessControlAllowOrigin = HTTPField.Name("Access-Control-Allow-Origin")!
    static let accessControlAllowMethods = HTTPField.Name("Access-Control-Allow-Methods")!
    static let accessControlAllowHeaders = HTTPField.Name("Access-Control-Allow-Headers")!
    static let accessControlRequestHeaders = HTTPField.Name("Access-Control-Request-Headers")!
    static let accessControlExposeHeaders = HTTPField.Name("Access-Control-Expose-Headers")!
    static let accessControlMaxAge = HTTPField.Name("Access-Control-Max-Age")!
    static let vary = HTTPField.Name("Vary")!
    static let origin = HTTPField.Name("Origin")!
}

/// Every request gets an id: the client's `X-Request-Id` (up to 128 printable characters) or a new one. It is
/// echoed in the response's `X-Request-Id` and in the one access-log line written per request (method, path,
/// status, milliseconds to the response head, id).
struct RequestIDMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let given = request.headers[.requestID].flatMap { id -> String? in
            id.count <= 128 && !id.isEmpty && id.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }) ? id : nil
        }
        let id = given ?? OpenAIServer.newID("req-")
        let t0 = ContinuousClock.now
        var response = try await next(request, context)
        response.headers[.requestID] = id
        let ms = (ContinuousClock.now - t0) / .milliseconds(1)
        context.logger.info("request", metadata: [
            "method": "\(request.method.rawValue)", "path": "\(request.uri.path)", "status": "\(response.status.code)",
            "ms": "\(String(format: "%.1f", ms))", "request_id": "\(id)",
        ])
        return response
    }
}

/// CORS for browser clients (`--cors-origins`): requests from an allowed origin get
/// `Access-Control-Allow-Origin` (and `Vary: Origin`); preflights (`OPTIONS` with
/// `Access-Control-Request-Method`) are answered 204 with the allowed methods and headers, before the API key is
/// checked (browsers send preflights without credentials). `*` allows every origin.
struct CORSPolicyMiddleware<Context: RequestContext>: RouterMiddleware {
    let origins: [String]

    func allowed(_ origin: String) -> String? {
        if origins.contains("*") { return "*" }
        return origins.contains(origin) ? origin : nil
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let origin = request.headers[.origin], let allow = allowed(origin) else {
            return try await next(request, context)
        }
        if request.method == .options, request.headers[HTTPField.Name("Access-Control-Request-Method")!] != nil {
            var h = HTTPFields()
            h[.accessControlAllowOrigin] = allow
            h[.accessControlAllowMethods] = "GET, POST, OPTIONS"
            h[.accessControlAllowHeaders] = request.headers[.accessControlRequestHeaders] ?? "Authorization, Content-Type, X-Request-Id"
            h[.accessControlMaxAge] = "600"
            if allow != "*" { h[.vary] = "Origin" }
            return Response(status: .noContent, headers: h)
        }
        var response = try await next(request, context)
        response.headers[.accessControlAllowOrigin] = allow
        response.headers[.accessControlExposeHeaders] = "X-Request-Id"
        if allow != "*" { response.headers[.vary] = "Origin" }
        return response
    }
}
