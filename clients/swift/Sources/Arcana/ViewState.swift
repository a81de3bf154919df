import Foundation

/// Identifies a row: its table and the text of its key.
public struct RowKey: Hashable, Sendable, CustomStringConvertible {
  public var table: String
  public var id: String
  public init(table: String, id: String) {
    self.table = table
    self.id = id
  }
  public var description: String { "\(table)/\(id)" }
}

/// One normalized row a view references.
public struct Row: Sendable, Equatable {
  public var table: String
  public var id: String
  public var fields: [String: Arcana_V1_Value]

  public var key: RowKey { RowKey(table: table, id: id) }

  public subscript(field: String) -> ArcanaValue? {
    fields[field].map(ArcanaValue.init)
  }
}

/// Why a frame could not be applied; the client resyncs the view.
public struct PatchError: Error, Sendable, CustomStringConvertible {
  public var description: String
}

/// One version of a view: ordered top-level refs, the rows they reach
/// (nested refs included) and the total, when the graph has one. A value
/// type: holding one never sees later changes.
public struct ViewState: Sendable, Equatable {
  public var viewID: String
  public var epoch: UInt64
  public var version: UInt64
  public var refs: [Arcana_V1_Ref]
  public var rows: [RowKey: Row]
  public var total: Int64?

  /// The row a ref points to.
  public func row(for ref: Arcana_V1_Ref) -> Row? {
    rows[RowKey(table: ref.table, id: ref.id)]
  }

  /// Whether two states hold the same refs, rows and total.
  public func sameContent(as other: ViewState) -> Bool {
    refs == other.refs && rows == other.rows && total == other.total
  }

  /// The state a snapshot frame describes.
  public init(snapshot frame: Arcana_V1_ViewFrame, _ snap: Arcana_V1_Snapshot) {
    viewID = frame.viewID
    epoch = frame.epoch
    version = frame.version
    refs = snap.refs
    rows = [:]
    for r in snap.rows {
      rows[RowKey(table: r.table, id: r.id)] = Row(table: r.table, id: r.id, fields: r.fields)
    }
    total = snap.hasTotal ? snap.total : nil
    collect()
  }

  /// The state after a diff frame. The caller checks that the frame
  /// continues this state (same epoch, prevVersion == version).
  public func applying(_ frame: Arcana_V1_ViewFrame, _ diff: Arcana_V1_ViewDiff) throws -> ViewState {
    var next = self
    next.epoch = frame.epoch
    next.version = frame.version
    next.refs = try Self.apply(refOps: diff.refs, to: refs)
    for r in diff.rows {
      next.rows[RowKey(table: r.table, id: r.id)] = Row(table: r.table, id: r.id, fields: r.fields)
    }
    for p in diff.patches {
      let key = RowKey(table: p.table, id: p.id)
      guard var row = next.rows[key] else {
        throw PatchError(description: "patch of row \(key) the view does not hold")
      }
      try Self.apply(fieldOps: p.ops, to: &row.fields)
      next.rows[key] = row
    }
    if diff.hasTotal { next.total = diff.total }
    next.collect()
    return next
  }

  /// Drops the rows no ref reaches, nested refs included.
  mutating func collect() {
    var reached = Set<RowKey>()
    func walk(_ r: Arcana_V1_Ref) {
      reached.insert(RowKey(table: r.table, id: r.id))
      for n in r.nested.values { walk(n) }
    }
    refs.forEach(walk)
    rows = rows.filter { reached.contains($0.key) }
  }

  static func index(_ path: String, count: Int, allowEnd: Bool) throws -> Int {
    guard path.hasPrefix("/") else { throw PatchError(description: "bad index path \(path)") }
    let token = path.dropFirst()
    let i: Int
    if token == "-" {
      i = count
    } else if let v = Int(token), v >= 0, !(token.count > 1 && token.hasPrefix("0")) {
      i = v
    } else {
      throw PatchError(description: "bad index path \(path)")
    }
    if i > count || (!allowEnd && i == count) {
      throw PatchError(description: "index \(i) out of range for \(count) refs")
    }
    return i
  }

  /// RFC 6902 sequential patch of the refs array; move = remove at `from`,
  /// then insert at `path`.
  static func apply(refOps: [Arcana_V1_RefOp], to input: [Arcana_V1_Ref]) throws -> [Arcana_V1_Ref] {
    var refs = input
    for op in refOps {
      switch op.op {
      case .add:
        guard op.hasValue else { throw PatchError(description: "add without a value") }
        refs.insert(op.value, at: try index(op.path, count: refs.count, allowEnd: true))
      case .remove:
        refs.remove(at: try index(op.path, count: refs.count, allowEnd: false))
      case .replace:
        guard op.hasValue else { throw PatchError(description: "replace without a value") }
        refs[try index(op.path, count: refs.count, allowEnd: false)] = op.value
      case .move:
        let item = refs.remove(at: try index(op.from, count: refs.count, allowEnd: false))
        refs.insert(item, at: try index(op.path, count: refs.count, allowEnd: true))
      default:
        throw PatchError(description: "unknown ref op \(op.op)")
      }
    }
    return refs
  }

  /// Add / remove / replace at "/<field>", with RFC 6901 unescaping.
  static func apply(fieldOps: [Arcana_V1_FieldOp], to fields: inout [String: Arcana_V1_Value]) throws {
    for op in fieldOps {
      guard op.path.hasPrefix("/"), !op.path.dropFirst().contains("/") else {
        throw PatchError(description: "bad field path \(op.path)")
      }
      let key = String(op.path.dropFirst())
        .replacingOccurrences(of: "~1", with: "/")
        .replacingOccurrences(of: "~0", with: "~")
      switch op.op {
      case .add:
        fields[key] = op.value
      case .replace:
        guard fields[key] != nil else { throw PatchError(description: "replace of missing field \(key)") }
        fields[key] = op.value
      case .remove:
        guard fields.removeValue(forKey: key) != nil else {
          throw PatchError(description: "remove of missing field \(key)")
        }
      default:
        throw PatchError(description: "field op \(op.op) is not supported")
      }
    }
  }
}

/// What the frames of one message (a `frame`, or a `frames` batch) did to one
/// view: the state the next frame applies to, and the updates to deliver once
/// all of them are applied. Each frame applies exactly as it would alone.
struct AppliedFrames {
  /// The state after the frames applied so far.
  private(set) var state: ViewState?
  /// Whether a frame replaced the state.
  private(set) var changed = false
  /// One per applied frame (and per error frame), in order.
  private(set) var updates: [ViewUpdate] = []
  /// Set by a diff that cannot apply: a gap, another epoch, a bad patch.
  private(set) var needsResync = false

  init(_ state: ViewState?) {
    self.state = state
  }

  mutating func apply(_ frame: Arcana_V1_ViewFrame) {
    switch frame.body {
    case .snapshot(let snap):
      let next = ViewState(snapshot: frame, snap)
      set(next, .snapshot(next))
    case .diff(let diff):
      guard let cur = state, cur.epoch == frame.epoch, cur.version == frame.prevVersion else {
        // Already applied (a catch-up can repeat queued diffs): ignore it.
        if let cur = state, cur.epoch == frame.epoch, frame.version <= cur.version { return }
        needsResync = true
        return
      }
      do {
        let next = try cur.applying(frame, diff)
        set(next, .diff(next))
      } catch {
        needsResync = true
      }
    case .error(let e):
      updates.append(
        .error(state, ArcanaError(code: e.code, message: e.message, operation: "view \(frame.viewID)")))
    case .none:
      break
    }
  }

  private mutating func set(_ next: ViewState, _ update: ViewUpdate) {
    state = next
    changed = true
    updates.append(update)
  }
}
