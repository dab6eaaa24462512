import Hummingbird
import HummingbirdCore
import HTTPTypes
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1

/// The server's HTTP/1 connection: Hummingbird's HTTP/1 channel with two handlers of ours in the pipeline.
/// - `HTTP1ProtocolHandler` (on NIO's HTTP/1 types, which still know the protocol version): HTTP/1.0 requests get
///   HTTP/1.0 responses, without chunked encoding (a streamed body ends when the connection closes), and the
///   connection closes after the response unless the client asked to keep it; a request the parser rejects gets
///   a 400 with an OpenAI-style JSON body.
/// - `ConnectionGuardHandler` (on HTTP types): idle and request timeouts, the connection cap, disconnect notice.
struct ServerHTTP1Channel: ServerChildChannel, HTTPChannelHandler {
    typealias Value = NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>

    let responder: HTTPChannelHandler.Responder
    let limits: ConnectionLimits

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                withPipeliningAssistance: false, withErrorHandling: false, withOutboundHeaderValidation: false)
            try channel.pipeline.syncOperations.addHandler(HTTP1ProtocolHandler())
            try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
            try channel.pipeline.syncOperations.addHandler(ConnectionGuardHandler(limits: limits))
            return try NIOAsyncChannel(wrappingChannelSynchronously: channel,
                                       configuration: .init(isOutboundHalfClosureEnabled: true))
        }
    }

    func handle(value asyncChannel: Value, logger: Logger) async {
        await handleHTTP(asyncChannel: asyncChannel, logger: logger)
    }
}

/// HTTP/1.0 and parse errors, between NIO's HTTP/1 codec and the conversion to HTTP types (see
/// `ServerHTTP1Channel`).
final class HTTP1ProtocolHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// Versions and keep-alive wishes of the requests not answered yet, oldest first.
    private var pending: [(version: HTTPVersion, keepAlive: Bool)] = []
    /// Close once the response being written ends.
    private var closeAfterResponse = false
    private var failed = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        var part = unwrapInboundIn(data)
        if case .head(var head) = part {
            pending.append((head.version, head.isKeepAlive))
            // Tell the layers above (which no longer see the version) to stop after this response.
            if !head.isKeepAlive { head.headers.replaceOrAdd(name: "connection", value: "close") }
            part = .head(head)
        }
        context.fireChannelRead(wrapInboundOut(part))
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(var head):
            let request = pending.isEmpty ? (HTTPVersion.http1_1, true) : pending.removeFirst()
            closeAfterResponse = !request.1
            if request.0 == .http1_0 {
                head.version = .http1_0
                head.headers.remove(name: "transfer-encoding")
                // Without a length the body is delimited by the connection's end.
                if !head.headers.contains(name: "content-length") { closeAfterResponse = true }
                if closeAfterResponse {
                    head.headers.replaceOrAdd(name: "connection", value: "close")
                } else {
                    head.headers.replaceOrAdd(name: "connection", value: "keep-alive")
                }
            } else if closeAfterResponse {
                head.headers.replaceOrAdd(name: "connection", value: "close")
            }
            context.write(wrapOutboundOut(.head(head)), promise: promise)
        case .body(let b):
            context.write(wrapOutboundOut(.body(b)), promise: promise)
        case .end(let trailers):
            let close = closeAfterResponse
            closeAfterResponse = false
            if close {
                let done = context.eventLoop.makePromise(of: Void.self)
                done.futureResult.cascade(to: promise)
                context.writeAndFlush(wrapOutboundOut(.end(trailers)), promise: done)
                done.futureResult.whenComplete { _ in context.close(promise: nil) }
            } else {
                context.write(wrapOutboundOut(.end(trailers)), promise: promise)
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard error is HTTPParserError, !failed else { return context.fireErrorCaught(error) }
        // A request the parser cannot read: an OpenAI-style 400, then close (the stream cannot be resynchronised).
        failed = true
        let body = APIError.invalid("The HTTP request is malformed (\(error)).", code: "bad_http_request").jsonBody
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: "\(body.count)")
        headers.add(name: "connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .badRequest, headers: headers))),
                      promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
    }
}
