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
