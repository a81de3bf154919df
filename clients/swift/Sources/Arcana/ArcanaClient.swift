import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf

/// What a mutation returned.
public struct MutateResult: Sendable {
  /// The first row the mutation's last statement returned, if any.
  public var data: [String: ArcanaValue]
  /// The changes fed into invalidation.
  public var changes: [Arcana_V1_Change]
}

/// A client of the Arcana sync engine over one bidirectional session
/// (`ArcanaService/Connect`). It reconnects with backoff when the session
/// drops and syncs every live view from the last version it applied.
///
///     let client = try await ArcanaClient.connect(host: "127.0.0.1", port: 50051, token: "dev-alice")
///     let view = try await client.subscribe("project_tasks", ["project_id": 1])
///     for await update in view.updates { ... }
public actor ArcanaClient {
  public typealias TokenProvider = @Sendable () async throws -> String
  typealias Transport = HTTP2ClientTransport.Posix

  private let grpc: GRPCClient<Transport>
  private let service: Arcana_V1_ArcanaService.Client<Transport>
  private let tokenProvider: TokenProvider
  private let minBackoff: Duration
  private let maxBackoff: Duration

  private struct Session {
    let id: String
    let generation: Int
    let outbound: AsyncStream<Arcana_V1_ClientMessage>.Continuation
  }

  private struct Pending {
    let op: String
    let generation: Int
    let continuation: CheckedContinuation<Arcana_V1_Reply, any Error>?
    /// Set for subscribes: what to register when the reply arrives.
    let subscribe: (graph: String, params: ArcanaParams)?
    /// Set for syncs: the views, in request order.
    let sync: [LiveView]?
  }

  private var generation = 0
  private var openedGeneration = 0
  private var session: Session?
  private var sessionWaiters: [CheckedContinuation<Void, Never>] = []
  private var readyWaiters: [String: [CheckedContinuation<Void, Never>]] = [:]
  private var pending: [UInt64: Pending] = [:]
  private var subscribed: [UInt64: LiveView] = [:]
  private var views: [String: LiveView] = [:]
  private var resyncing: Set<String> = []
  /// View id -> request id of the last Unsubscribe sent on this session.
  private var unsubscribed: [String: UInt64] = [:]
  private var nextID: UInt64 = 0
  private var closed = false
  private var fatal: ArcanaError?
  private var runTask: Task<Void, Never>?
  private var connectionsTask: Task<Void, Never>?

  init(
    transport: Transport, tokenProvider: @escaping TokenProvider,
    minBackoff: Duration, maxBackoff: Duration
  ) {
    self.grpc = GRPCClient(transport: transport)
    self.service = Arcana_V1_ArcanaService.Client(wrapping: grpc)
    self.tokenProvider = tokenProvider
    self.minBackoff = minBackoff
    self.maxBackoff = max(minBackoff, maxBackoff)
  }

  /// Creates a client and starts its session in the background. An empty
  /// token sends no authorization header.
  public static func connect(
    host: String, port: Int, token: String, tls: Bool = false,
    minBackoff: Duration = .milliseconds(100), maxBackoff: Duration = .seconds(5)
  ) async throws -> ArcanaClient {
    try await connect(
      host: host, port: port, tls: tls, minBackoff: minBackoff, maxBackoff: maxBackoff,
      tokenProvider: { token })
  }

  /// Like `connect(host:port:token:)`, asking `tokenProvider` for the token
  /// before every call and every new session (for short-lived service tokens).
  public static func connect(
    host: String, port: Int, tls: Bool = false,
    minBackoff: Duration = .milliseconds(100), maxBackoff: Duration = .seconds(5),
    tokenProvider: @escaping TokenProvider
  ) async throws -> ArcanaClient {
    let transport = try HTTP2ClientTransport.Posix(
      target: .dns(host: host, port: port),
      transportSecurity: tls ? .tls : .plaintext)
    let client = ArcanaClient(
      transport: transport, tokenProvider: tokenProvider,
      minBackoff: minBackoff, maxBackoff: maxBackoff)
    await client.start()
    return client
  }

  private func start() {
    let grpc = self.grpc
    connectionsTask = Task { try? await grpc.runConnections() }
    runTask = Task { await self.run() }
  }

  /// Stops every view, ends the session and the connection.
  public func close() {
    guard !closed else { return }
    closed = true
    for view in views.values { view.stop(nil) }
    views.removeAll()
    session?.outbound.finish()
    session = nil
    failPending(where: { _ in true })
    for w in sessionWaiters { w.resume() }
    sessionWaiters.removeAll()
    for ws in readyWaiters.values { ws.forEach { $0.resume() } }
    readyWaiters.removeAll()
    runTask?.cancel()
    grpc.beginGracefulShutdown()
  }

  /// The current session id, nil while disconnected.
  public var sessionID: String? { session?.id }

  // MARK: - Session loop

  private func run() async {
    var delay = minBackoff
    while !closed {
      let (opened, error) = await runSession()
      if closed { return }
      if !opened, let e = error as? RPCError,
        [.unauthenticated, .permissionDenied, .unimplemented].contains(e.code)
      {
        setFatal(ArcanaError(e, operation: "connect"))
        return
      }
      if opened { delay = minBackoff }
      let seconds = Double(delay.components.seconds) + Double(delay.components.attoseconds) / 1e18
      try? await Task.sleep(for: .seconds(seconds * Double.random(in: 0.5...1.0)))
      delay = min(delay * 2, maxBackoff)
    }
  }

  private func setFatal(_ error: ArcanaError) {
    fatal = error
    for view in views.values { view.stop(error) }
    views.removeAll()
    for w in sessionWaiters { w.resume() }
    sessionWaiters.removeAll()
    for ws in readyWaiters.values { ws.forEach { $0.resume() } }
    readyWaiters.removeAll()
  }

  private func authMetadata() async throws -> Metadata {
    var md = Metadata()
    let token: String
    do {
      token = try await tokenProvider()
    } catch {
      throw ArcanaError(code: ArcanaError.unauthenticated, message: "token: \(error)", operation: "token")
    }
    if !token.isEmpty { md.addString("Bearer \(token)", forKey: "authorization") }
    return md
  }

  /// One Connect stream, until it ends. Returns whether the server opened it.
  private func runSession() async -> (Bool, (any Error)?) {
    generation += 1
    let gen = generation
    let (outbound, continuation) = AsyncStream<Arcana_V1_ClientMessage>.makeStream()
    var failure: (any Error)?
    do {
      let md = try await authMetadata()
      try await service.connect(
        metadata: md,
        requestProducer: { writer in
          for await message in outbound { try await writer.write(message) }
        },
        onResponse: { response in
          defer { continuation.finish() }
          for try await message in response.messages {
            await self.receive(message, generation: gen, outbound: continuation)
          }
        })
    } catch {
      failure = error
    }
    continuation.finish()
    sessionEnded(gen)
    return (openedGeneration == gen, failure)
  }

  private func sessionEnded(_ gen: Int) {
    if session?.generation == gen { session = nil }
    failPending(where: { $0.generation == gen })
    unsubscribed.removeAll()
  }

  private func failPending(where match: (Pending) -> Bool) {
    for (id, p) in pending where match(p) {
      pending[id] = nil
      p.continuation?.resume(throwing: closed ? ArcanaError.closed(p.op) : ArcanaError.lost(p.op))
    }
  }

  private func waitSession(_ op: String) async throws -> Session {
    while true {
      if closed { throw ArcanaError.closed(op) }
      if let fatal { throw fatal }
      if let session { return session }
      await withCheckedContinuation { sessionWaiters.append($0) }
    }
  }

  private func send(
    _ kind: Arcana_V1_ClientMessage.OneOf_Kind, on session: Session, op: String,
    subscribe: (graph: String, params: ArcanaParams)? = nil, sync: [LiveView]? = nil,
    continuation: CheckedContinuation<Arcana_V1_Reply, any Error>?
  ) -> UInt64 {
    nextID += 1
    var message = Arcana_V1_ClientMessage()
    message.requestID = nextID
    message.kind = kind
    pending[nextID] = Pending(
      op: op, generation: session.generation, continuation: continuation,
      subscribe: subscribe, sync: sync)
    session.outbound.yield(message)
    return nextID
  }

  private func request(
    _ kind: Arcana_V1_ClientMessage.OneOf_Kind, op: String,
    subscribe: (graph: String, params: ArcanaParams)? = nil
  ) async throws -> (Arcana_V1_Reply, UInt64) {
    let s = try await waitSession(op)
    var id: UInt64 = 0
    let reply = try await withCheckedThrowingContinuation { cont in
      id = send(kind, on: s, op: op, subscribe: subscribe, continuation: cont)
    }
    return (reply, id)
  }

  // MARK: - Incoming messages

  private func receive(
    _ message: Arcana_V1_ServerMessage, generation gen: Int,
    outbound: AsyncStream<Arcana_V1_ClientMessage>.Continuation
  ) {
    guard gen == generation, !closed else { return }
    switch message.kind {
    case .opened(let opened):
      openedGeneration = gen
      let s = Session(id: opened.sessionID, generation: gen, outbound: outbound)
      // Sync goes out before anything else on the new session.
      let live = views.values.sorted { $0.id < $1.id }
      resyncing.removeAll()
      if !live.isEmpty { sendSync(live, on: s) }
      session = s
      for w in sessionWaiters { w.resume() }
      sessionWaiters.removeAll()
    case .reply(let reply):
      guard let p = pending.removeValue(forKey: reply.requestID) else { return }
      if let sub = p.subscribe, case .subscribe(let r)? = reply.result {
        attach(requestID: reply.requestID, graph: sub.graph, params: sub.params, reply: r)
      }
      if let list = p.sync { onSyncReply(list, reply) }
      p.continuation?.resume(returning: reply)
    case .frame(let frame):
      onFrames([frame])
    case .frames(let batch):
      onFrames(batch.frames)
    case .none:
      break
    }
  }

  private func attach(
    requestID: UInt64, graph: String, params: ArcanaParams, reply: Arcana_V1_SubscribeResponse
  ) {
    if let u = unsubscribed[reply.viewID], u > requestID { return }  // superseded: retried
    let view =
      views[reply.viewID]
      ?? LiveView(id: reply.viewID, graph: graph, params: params, epoch: reply.epoch, client: self)
    views[view.id] = view
    subscribed[requestID] = view
  }

  /// Applies the frames of one message (a frame, or a batch) in order, each
  /// exactly as if it had come alone. A view's state is published once, after
  /// the last of them, so `state` never shows a batch half applied; its
  /// updates (one per frame) follow. A view that hit a gap is resynced from
  /// the state it reached.
  private func onFrames(_ frames: [Arcana_V1_ViewFrame]) {
    var applied: [String: AppliedFrames] = [:]
    var order: [LiveView] = []
    for frame in frames {
      if applied[frame.viewID] == nil {
        guard let view = views[frame.viewID] else { continue }  // unsubscribed meanwhile
        applied[frame.viewID] = AppliedFrames(view.state)
        order.append(view)
      }
      applied[frame.viewID]!.apply(frame)
    }
    for view in order {
      guard let a = applied[view.id] else { continue }
      view.publish(a.changed ? a.state : nil, a.updates)
      if a.changed { wakeReady(view.id) }
      if a.needsResync { resync(view) }
    }
  }

  private func wakeReady(_ id: String) {
    readyWaiters.removeValue(forKey: id)?.forEach { $0.resume() }
  }

  private func resync(_ view: LiveView) {
    guard let s = session, !resyncing.contains(view.id) else { return }
    resyncing.insert(view.id)
    sendSync([view], on: s)
  }

  private func sendSync(_ list: [LiveView], on s: Session) {
    var req = Arcana_V1_SyncRequest()
    req.views = list.map { v in
      var sv = Arcana_V1_SyncView()
      sv.graph = v.graph
      sv.params = v.params.proto
      let position = v.position
      sv.epoch = position.epoch
      sv.version = position.version
      return sv
    }
    _ = send(.sync(req), on: s, op: "sync", sync: list, continuation: nil)
  }

  private func onSyncReply(_ list: [LiveView], _ reply: Arcana_V1_Reply) {
    for v in list { resyncing.remove(v.id) }
    switch reply.result {
    case .error(let e)?:
      let err = ArcanaError(e, operation: "sync")
      for v in list { v.report(.error(v.state, err)) }
    case .sync(let r)?:
      for (i, v) in list.enumerated() where i < r.results.count {
        let res = r.results[i]
        guard views[v.id] === v else {
          if !res.hasError, let s = session { sendUnsubscribe(v.id, on: s) }
          continue
        }
        if res.hasError {
          views[v.id] = nil
          v.stop(ArcanaError(res.error, operation: "sync \(v.graph)"))
          wakeReady(v.id)
          continue
        }
        let mode: SyncMode
        switch res.mode {
        case .catchUp: mode = .catchUp(frames: res.frames)
        case .snapshot: mode = .snapshot
        default: mode = .current
        }
        v.report(.synced(v.state, mode))
      }
    default:
      break
    }
  }

  private func sendUnsubscribe(_ viewID: String, on s: Session) {
    var req = Arcana_V1_UnsubscribeRequest()
    req.viewID = viewID
    let id = send(.unsubscribe(req), on: s, op: "unsubscribe", continuation: nil)
    unsubscribed[viewID] = id
  }

  // MARK: - Public calls

  /// Subscribes to a graph view; returns once the first snapshot is applied.
  /// Retried on the next session if the session drops before the reply.
  public func subscribe(_ graph: String, _ params: ArcanaParams = [:]) async throws -> LiveView {
    let op = "subscribe \(graph)"
    var req = Arcana_V1_SubscribeRequest()
    req.graph = graph
    req.params = params.proto
    while true {
      let result: (Arcana_V1_Reply, UInt64)
      do {
        result = try await request(.subscribe(req), op: op, subscribe: (graph, params))
      } catch let e as ArcanaError where e.code == ArcanaError.unavailable && !closed {
        continue  // the session dropped: subscribe on the next one
      }
      let (reply, id) = result
      if case .error(let e)? = reply.result { throw ArcanaError(e, operation: op) }
      guard let view = subscribed.removeValue(forKey: id) else { continue }
      if view.state == nil && !view.isClosed {
        await withCheckedContinuation { readyWaiters[view.id, default: []].append($0) }
      }
      if view.state == nil {
        throw view.stoppedError ?? fatal ?? ArcanaError.closed(op)
      }
      return view
    }
  }

  func closeView(_ view: LiveView) {
    view.stop(nil)
    guard views[view.id] === view else { return }
    views[view.id] = nil
    wakeReady(view.id)
    if let s = session { sendUnsubscribe(view.id, on: s) }
  }

  /// Runs a named mutation on the session. It returns after the frames it
  /// caused were applied to this client's views. Never retried: a dropped
  /// session fails it with code 14 (Unavailable).
  public func mutate(_ name: String, _ params: ArcanaParams = [:]) async throws -> MutateResult {
    let op = "mutate \(name)"
    var req = Arcana_V1_MutateRequest()
    req.mutation = name
    req.params = params.proto
    let (reply, _) = try await request(.mutate(req), op: op)
    switch reply.result {
    case .error(let e)?: throw ArcanaError(e, operation: op)
    case .mutate(let m)?: return MutateResult(data: m.data.mapValues(ArcanaValue.init), changes: m.changes)
    default: throw ArcanaError(code: ArcanaError.internalError, message: "unexpected reply", operation: op)
    }
  }

  /// Tells the engine rows changed after a direct database write (the token
  /// needs `arcana:notify`).
  public func notify(_ changes: [Arcana_V1_Change]) async throws {
    var req = Arcana_V1_NotifyRequest()
    req.changes = changes
    do {
      _ = try await service.notify(req, metadata: try await authMetadata())
    } catch let e as RPCError {
      throw ArcanaError(e, operation: "notify")
    }
  }

  /// The server's registry: graphs, mutations, tables.
  public func describe() async throws -> Arcana_V1_DescribeResponse {
    do {
      return try await service.describe(Arcana_V1_DescribeRequest(), metadata: try await authMetadata())
    } catch let e as RPCError {
      throw ArcanaError(e, operation: "describe")
    }
  }
}
