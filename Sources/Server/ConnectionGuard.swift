import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTPTypes

/// Per-connection state a request handler can watch: whether the client has gone away.
public final class ConnectionState: Sendable {
    private struct State {
        var closed = false
        var nextID: UInt64 = 0
        var callbacks: [UInt64: @Sendable () -> Void] = [:]
    }
    private let state = NIOLockedValueBox(State())

    public init() {}

    public var isClosed: Bool { state.withLockedValue { $0.closed } }

    /// Calls `f` once when the client disconnects (at once if it already has). Returns a token for `cancel`.
    @discardableResult
    public func onClose(_ f: @escaping @Sendable () -> Void) -> UInt64? {
        let id: UInt64? = state.withLockedValue { s in
            if s.closed { return nil }
            s.nextID += 1
            s.callbacks[s.nextID] = f
            return s.nextID
        }
        if id == nil { f() }
        return id
    }

    public func cancel(_ token: UInt64?) {
        guard let token else { return }
        _ = state.withLockedValue { $0.callbacks.removeValue(forKey: token) }
    }

    func markClosed() {
        let cbs: [@Sendable () -> Void] = state.withLockedValue { s in
            if s.closed { return [] }
            s.closed = true
            defer { s.callbacks.removeAll() }
            return Array(s.callbacks.values)
        }
        for f in cbs { f() }
    }
}

/// Finds the `ConnectionState` of a request's channel.
public final class ConnectionRegistry: Sendable {
    public static let shared = ConnectionRegistry()
    private let map = NIOLockedValueBox([ObjectIdentifier: ConnectionState]())

    func register(_ channel: any Channel, _ s: ConnectionState) {
        map.withLockedValue { $0[ObjectIdentifier(channel)] = s }
    }

    func remove(_ channel: any Channel) {
        _ = map.withLockedValue { $0.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    public func state(for channel: any Channel) -> ConnectionState? {
        map.withLockedValue { $0[ObjectIdentifier(channel)] }
    }

    public var count: Int { map.withLockedValue { $0.count } }
}

/// Sits in each HTTP/1 connection's pipeline (after the HTTP codec). Two jobs:
/// - reports the client going away (input closed or connection reset) to `ConnectionState`, so the request
///   being generated is aborted at once instead of when a write fails;
/// - closes connections that take longer than `requestTimeout` to deliver a complete request (slow-loris),
///   counted from the moment the connection is ready for one (opened, or the previous response sent).
///   A request that has been read and is being answered is never timed out here.
final class ConnectionGuardHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let timeout: TimeAmount
    private let connection = ConnectionState()
    private var timer: Scheduled<Void>?
    private var reading = false
    private var inFlight = 0
    private var registered = false

    init(requestTimeout: TimeAmount) {
        timeout = requestTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        ConnectionRegistry.shared.register(context.channel, connection)
        registered = true
        if context.channel.isActive { startTimer(context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        cancelTimer()
        unregister(context)
    }

    private func unregister(_ context: ChannelHandlerContext) {
        if registered {
            ConnectionRegistry.shared.remove(context.channel)
            registered = false
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        startTimer(context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        cancelTimer()
        connection.markClosed()
        unregister(context)
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, e == .inputClosed {
            connection.markClosed()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            reading = true
            inFlight += 1
            if timer == nil { startTimer(context) }
        case .body:
            break
        case .end:
            reading = false
            cancelTimer()
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) {
            inFlight = max(0, inFlight - 1)
            if inFlight == 0 && !reading { startTimer(context) }
        }
        context.write(data, promise: promise)
    }

    private func startTimer(_ context: ChannelHandlerContext) {
        cancelTimer()
        let ctx = context
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            self.timer = nil
            // Still reading a request, or idle between requests: close. Answering one: leave it.
            if self.reading || self.inFlight == 0 {
                ctx.close(promise: nil)
            }
        }
    }

    private func cancelTimer() {
        timer?.cancel()
        timer = nil
    }
}
