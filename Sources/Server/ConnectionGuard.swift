import HTTPTypes
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTPTypes

/// Per-connection state a request handler can watch: whether the client has gone away. The registry also reads
/// whether the connection is idle (no request being read or answered) and since when, to evict the longest idle
/// connection when the connection cap is reached.
public final class ConnectionState: Sendable {
    private struct State {
        var closed = false
        var nextID: UInt64 = 0
        var callbacks: [UInt64: @Sendable () -> Void] = [:]
        var idleSince: NIODeadline? = .now()
    }
    private let state = NIOLockedValueBox(State())
    /// Closes the connection (set when the connection is registered).
    let close: @Sendable () -> Void

    public init(close: @escaping @Sendable () -> Void = {}) {
        self.close = close
    }

    public var isClosed: Bool { state.withLockedValue { $0.closed } }

    /// When the connection became idle, or nil while a request is being read or answered.
    var idleSince: NIODeadline? { state.withLockedValue { $0.idleSince } }

    func setIdle(_ idle: Bool) {
        state.withLockedValue { $0.idleSince = idle ? ($0.idleSince ?? .now()) : nil }
    }

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

/// Finds the `ConnectionState` of a request's channel, and keeps the number of open connections under the cap.
public final class ConnectionRegistry: Sendable {
    public static let shared = ConnectionRegistry()
    private let map = NIOLockedValueBox([ObjectIdentifier: ConnectionState]())
    /// Connections closed to make room for new ones (for /health and the tests).
    private let evictions = NIOLockedValueBox(0)

    /// Registers a new connection if there is room under `limit`, closing the longest idle connection to make room
    /// when there is not; false when every open connection is busy (the new one is then refused).
    func admit(_ channel: any Channel, _ s: ConnectionState, limit: Int) -> Bool {
        let evicted: ConnectionState? = map.withLockedValue { m in
            let key = ObjectIdentifier(channel)
            if m[key] != nil || m.count < limit {
                m[key] = s
                return nil
            }
            var oldest: (ObjectIdentifier, ConnectionState, NIODeadline)?
            for (k, c) in m {
                if let since = c.idleSince, oldest == nil || since < oldest!.2 { oldest = (k, c, since) }
            }
            guard let (k, c, _) = oldest else { return s }  // none idle: refuse
            m.removeValue(forKey: k)
            m[key] = s
            return c
        }
        guard let evicted else { return true }
        if evicted === s { return false }
        evictions.withLockedValue { $0 += 1 }
        evicted.close()
        return true
    }

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

    /// Idle connections closed so far to admit new ones.
    public var evictionCount: Int { evictions.withLockedValue { $0 } }
}

/// How long a connection may wait and how many may be open (`--request-timeout`, `--idle-timeout`,
/// `--max-connections`).
public struct ConnectionLimits: Sendable {
    public var requestTimeout: TimeAmount
    public var idleTimeout: TimeAmount
    public var maxConnections: Int

    public init(requestTimeout: TimeAmount, idleTimeout: TimeAmount, maxConnections: Int) {
        self.requestTimeout = requestTimeout
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
    }
}

/// Sits in each HTTP/1 connection's pipeline (after the conversion to HTTP types). Three jobs:
/// - reports the client going away (input closed or connection reset) to `ConnectionState`, so the request
///   being generated is aborted at once instead of when a write fails;
/// - bounds waiting: a connection idle between requests is closed after `idleTimeout`; one that takes longer than
///   `requestTimeout` to deliver a complete request (slow-loris), or a fresh one longer than the shorter of the two
///   to start one, is closed too. A request
///   that has been read and is being answered is never timed out here;
/// - the connection cap: a new connection beyond `maxConnections` closes the longest idle one; if none is idle,
///   its first request is answered 503 (OpenAI-style JSON) and the connection closed.
final class ConnectionGuardHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let limits: ConnectionLimits
    private var connection: ConnectionState?
    private var timer: Scheduled<Void>?
    private var reading = false
    private var inFlight = 0
    private var registered = false
    /// Over the cap with every connection busy: the request is read and answered 503.
    private var refused = false
    /// No request has started yet: the first must come within both timeouts.
    private var fresh = true

    init(limits: ConnectionLimits) {
        self.limits = limits
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { activate(context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        cancelTimer()
        unregister(context)
    }

    private func activate(_ context: ChannelHandlerContext) {
        guard connection == nil else { return }
        let channel = context.channel
        let state = ConnectionState(close: { channel.close(promise: nil) })
        connection = state
        if ConnectionRegistry.shared.admit(channel, state, limit: limits.maxConnections) {
            registered = true
        } else {
            refused = true
        }
        startTimer(context)
    }

    private func unregister(_ context: ChannelHandlerContext) {
        if registered {
            ConnectionRegistry.shared.remove(context.channel)
            registered = false
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        activate(context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        cancelTimer()
        connection?.markClosed()
        unregister(context)
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, e == .inputClosed {
            connection?.markClosed()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if refused {
            if case .end = part { refuse(context) }
            return
        }
        switch part {
        case .head:
            fresh = false
            reading = true
            inFlight += 1
            connection?.setIdle(false)
            startTimer(context)
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
            if inFlight == 0 && !reading {
                connection?.setIdle(true)
                startTimer(context)
            }
        }
        context.write(data, promise: promise)
    }

    /// 503 with an OpenAI-style body, then close.
    private func refuse(_ context: ChannelHandlerContext) {
        refused = false  // answer once
        let error = APIError.overloaded("The server has \(limits.maxConnections) connections open, all busy (--max-connections); retry later.")
        let body = error.jsonBody
        let head = HTTPResponse(status: .serviceUnavailable,
                                headerFields: [.contentType: "application/json", .contentLength: "\(body.count)",
                                               .connection: "close"])
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(ByteBuffer(bytes: body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
    }

    private func startTimer(_ context: ChannelHandlerContext) {
        cancelTimer()
        let ctx = context
        let waitingForRequest = inFlight == 0 && !reading
        // A fresh connection may already be sending its first head (not parsed yet): it gets the shorter of the two.
        let wait = !waitingForRequest ? limits.requestTimeout
            : fresh ? min(limits.idleTimeout, limits.requestTimeout) : limits.idleTimeout
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: wait) { [self] in
            self.timer = nil
            // Still reading a request, or idle: close. Answering one: leave it.
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
