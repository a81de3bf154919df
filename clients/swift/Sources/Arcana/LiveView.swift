import Synchronization

/// How a sync brought a view up to date.
public enum SyncMode: Sendable, Equatable {
  /// The missed diffs were replayed.
  case catchUp(frames: UInt32)
  /// A fresh snapshot replaced the state.
  case snapshot
  /// Nothing was missed.
  case current
}

/// One change of a live view.
public enum ViewUpdate: Sendable {
  /// A snapshot replaced the state (first load, new epoch, resync).
  case snapshot(ViewState)
  /// A diff was applied.
  case diff(ViewState)
  /// The view was synced on a new session or after a gap.
  case synced(ViewState?, SyncMode)
  /// The server could not refresh the view (the state is the last good
  /// one), or the view was dropped.
  case error(ViewState?, ArcanaError)
}

/// A live subscription to one graph view. `state` is always the latest
/// applied version; `updates` reports each change (the newest 64 are kept
/// when the reader falls behind). One LiveView exists per view id and client:
/// subscribing again to the same graph and params returns the same object.
public final class LiveView: Sendable {
  public let id: String
  public let graph: String
  public let params: ArcanaParams
  public let updates: AsyncStream<ViewUpdate>
  let client: ArcanaClient
  /// The epoch from the subscribe reply, for a sync before the first snapshot.
  let replyEpoch: UInt64

  private struct Box: Sendable {
    var state: ViewState?
    var continuation: AsyncStream<ViewUpdate>.Continuation?
    var stopped: ArcanaError?
    var closed = false
  }
  private let box: Mutex<Box>

  init(id: String, graph: String, params: ArcanaParams, epoch: UInt64, client: ArcanaClient) {
    self.id = id
    self.graph = graph
    self.params = params
    self.replyEpoch = epoch
    self.client = client
    let (stream, continuation) = AsyncStream<ViewUpdate>.makeStream(
      bufferingPolicy: .bufferingNewest(64))
    self.updates = stream
    self.box = Mutex(Box(state: nil, continuation: continuation))
  }

  /// The latest state; nil only before the first snapshot (subscribe
  /// returns after it).
  public var state: ViewState? { box.withLock { $0.state } }

  /// Why the view stopped, when the server refused it on a resync or the
  /// client gave up; nil while live and after close().
  public var stoppedError: ArcanaError? { box.withLock { $0.stopped } }

  public var isClosed: Bool { box.withLock { $0.closed } }

  /// Ends the subscription.
  public func close() async {
    await client.closeView(self)
  }

  /// Where a sync request should start from.
  var position: (epoch: UInt64, version: UInt64) {
    box.withLock { b in
      if let s = b.state { return (s.epoch, s.version) }
      return (replyEpoch, 0)
    }
  }

  /// Stores the state the frames of one message led to (nil: unchanged),
  /// then yields their updates in order.
  func publish(_ state: ViewState?, _ updates: [ViewUpdate]) {
    box.withLock { b in
      guard !b.closed else { return }
      if let state { b.state = state }
      for update in updates { b.continuation?.yield(update) }
    }
  }

  func report(_ update: ViewUpdate) {
    box.withLock { b in
      guard !b.closed else { return }
      b.continuation?.yield(update)
    }
  }

  func stop(_ error: ArcanaError?) {
    box.withLock { b in
      guard !b.closed else { return }
      b.closed = true
      b.stopped = error
      if let error { b.continuation?.yield(.error(b.state, error)) }
      b.continuation?.finish()
      b.continuation = nil
    }
  }
}
