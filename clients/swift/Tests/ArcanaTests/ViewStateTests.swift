import Testing

@testable import Arcana

private func ref(_ id: String, table: String = "t") -> Arcana_V1_Ref {
  var r = Arcana_V1_Ref()
  r.table = table
  r.id = id
  return r
}

private func op(_ kind: Arcana_V1_PatchOp, _ path: String, from: String = "", _ id: String? = nil)
  -> Arcana_V1_RefOp
{
  var o = Arcana_V1_RefOp()
  o.op = kind
  o.path = path
  o.from = from
  if let id { o.value = ref(id) }
  return o
}

@Test func movesAreRemoveThenInsert() throws {
  let refs = ["a", "b", "c", "d"].map { ref($0) }
  let rotated = try ViewState.apply(refOps: [op(.move, "/3", from: "/0")], to: refs)
  #expect(rotated.map(\.id) == ["b", "c", "d", "a"])
  let back = try ViewState.apply(refOps: [op(.move, "/0", from: "/3")], to: refs)
  #expect(back.map(\.id) == ["d", "a", "b", "c"])
}

@Test func sequentialPatch() throws {
  let refs = ["a", "b", "c", "d", "e"].map { ref($0) }
  let ops = [
    op(.remove, "/3"), op(.remove, "/0"), op(.move, "/0", from: "/2"),
    op(.add, "/1", "x"), op(.move, "/3", from: "/2"), op(.add, "/-", "y"),
  ]
  #expect(try ViewState.apply(refOps: ops, to: refs).map(\.id) == ["e", "x", "c", "b", "y"])
}

@Test func badRefOpsThrow() {
  let refs = ["a", "b"].map { ref($0) }
  for bad in [op(.remove, "/2"), op(.add, "/3", "x"), op(.replace, "1", "x"), op(.remove, "/01")] {
    #expect(throws: PatchError.self) { try ViewState.apply(refOps: [bad], to: refs) }
  }
}

@Test func fieldPathsAreUnescaped() throws {
  var fields: [String: Arcana_V1_Value] = ["a/b": ArcanaValue.int(1).proto, "c~d": ArcanaValue.int(2).proto]
  var replace = Arcana_V1_FieldOp()
  replace.op = .replace
  replace.path = "/a~1b"
  replace.value = ArcanaValue.int(10).proto
  var remove = Arcana_V1_FieldOp()
  remove.op = .remove
  remove.path = "/c~0d"
  try ViewState.apply(fieldOps: [replace, remove], to: &fields)
  #expect(fields.count == 1)
  #expect(ArcanaValue(fields["a/b"]!) == .int(10))
}

@Test func unreachableRowsLeaveTheView() throws {
  var task = ref("1", table: "tasks")
  task.nested["assignee"] = ref("u1", table: "users")
  var frame = Arcana_V1_ViewFrame()
  frame.epoch = 1
  frame.version = 1
  var snap = Arcana_V1_Snapshot()
  snap.refs = [task]
  snap.rows = [("tasks", "1"), ("users", "u1"), ("users", "stray")].map { pair in
    var r = Arcana_V1_Row()
    r.table = pair.0
    r.id = pair.1
    return r
  }
  let state = ViewState(snapshot: frame, snap)
  #expect(state.rows.count == 2)

  var next = Arcana_V1_ViewFrame()
  next.epoch = 1
  next.version = 2
  next.prevVersion = 1
  var diff = Arcana_V1_ViewDiff()
  diff.refs = [op(.remove, "/0")]
  diff.total = 0
  let after = try state.applying(next, diff)
  #expect(after.rows.isEmpty)
  #expect(after.total == 0)
  #expect(state.rows.count == 2)
}

@Test func int64StaysExact() {
  let big: Int64 = 9_007_199_254_740_993
  #expect(ArcanaValue(ArcanaValue.int(big).proto).intValue == big)
}

private func diffFrame(_ prev: UInt64, epoch: UInt64 = 1, _ ops: [Arcana_V1_RefOp])
  -> Arcana_V1_ViewFrame
{
  var f = Arcana_V1_ViewFrame()
  f.viewID = "g/1"
  f.epoch = epoch
  f.version = prev + 1
  f.prevVersion = prev
  var d = Arcana_V1_ViewDiff()
  d.refs = ops
  for o in ops where o.hasValue {
    var r = Arcana_V1_Row()
    r.table = "t"
    r.id = o.value.id
    d.rows.append(r)
  }
  f.diff = d
  return f
}

@Test func batchedFramesApplyInOrderLikeLoneOnes() throws {
  var frame = Arcana_V1_ViewFrame()
  frame.viewID = "g/1"
  frame.epoch = 1
  frame.version = 1
  var snap = Arcana_V1_Snapshot()
  snap.refs = [ref("a")]
  var row = Arcana_V1_Row()
  row.table = "t"
  row.id = "a"
  snap.rows = [row]
  let start = ViewState(snapshot: frame, snap)

  var batch = AppliedFrames(start)
  batch.apply(diffFrame(1, [op(.add, "/-", "b")]))
  batch.apply(diffFrame(2, [op(.add, "/0", "c")]))
  batch.apply(diffFrame(2, [op(.add, "/0", "c")]))  // a repeat: ignored
  #expect(batch.changed)
  #expect(!batch.needsResync)
  #expect(batch.updates.count == 2)
  #expect(batch.state?.version == 3)
  #expect(batch.state?.refs.map(\.id) == ["c", "a", "b"])
  #expect(batch.state?.rows.count == 3)

  // A gap keeps what applied before it and asks for a resync.
  batch.apply(diffFrame(4, [op(.remove, "/0")]))
  #expect(batch.needsResync)
  #expect(batch.state?.version == 3)
  #expect(batch.updates.count == 2)

  // Another epoch is a gap too; nothing changes on the way in.
  var other = AppliedFrames(start)
  other.apply(diffFrame(1, epoch: 2, []))
  #expect(other.needsResync && !other.changed && other.updates.isEmpty)
  #expect(start.version == 1)
}
