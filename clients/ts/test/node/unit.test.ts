// Pure functions and frame handling, without a server.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type MessageInitShape, create } from "@bufbuild/protobuf";
import { ArcanaClient, LiveView, applyRefOps, parseJson, pb, stringifyJson, toValue, unescapeField, fromValue, val } from "../../src/index.js";

const ref = (id: string) => create(pb.RefSchema, { table: "t", id });
const ids = (refs: readonly { id: string }[]) => refs.map((r) => r.id);

describe("refs patches", () => {
  it("applies add, remove, replace and move in order", () => {
    const refs = ["a", "b", "c", "d"].map(ref);
    const out = applyRefOps(refs, [
      { op: pb.PatchOp.REMOVE, path: "/1", from: "" },
      { op: pb.PatchOp.MOVE, path: "/0", from: "/2" },
      { op: pb.PatchOp.ADD, path: "/-", from: "", value: ref("x") },
      { op: pb.PatchOp.ADD, path: "/1", from: "", value: ref("y") },
      { op: pb.PatchOp.REPLACE, path: "/2", from: "", value: ref("c2") },
    ]);
    assert.deepEqual(ids(out!), ["d", "y", "c2", "c", "x"]);
    assert.deepEqual(ids(refs), ["a", "b", "c", "d"], "input untouched");
  });

  it("moves to the end after removing from the source", () => {
    const out = applyRefOps(["a", "b", "c"].map(ref), [{ op: pb.PatchOp.MOVE, path: "/2", from: "/0" }]);
    assert.deepEqual(ids(out!), ["b", "c", "a"]);
  });

  it("rejects patches that do not fit", () => {
    assert.equal(applyRefOps([ref("a")], [{ op: pb.PatchOp.REMOVE, path: "/1", from: "" }]), undefined);
    assert.equal(applyRefOps([ref("a")], [{ op: pb.PatchOp.ADD, path: "/x", from: "" }]), undefined);
    assert.equal(applyRefOps([], [{ op: pb.PatchOp.MOVE, path: "/0", from: "/0" }]), undefined);
  });

  it("unescapes field pointers", () => {
    assert.equal(unescapeField("/a~1b"), "a/b");
    assert.equal(unescapeField("/c~0d"), "c~d");
    assert.equal(unescapeField("/~01"), "~1");
  });
});

describe("values", () => {
  it("parses JSON keeping big integers exact", () => {
    assert.deepEqual(parseJson('{"big": 9007199254740993, "n": [1, 2.5, -3e2, "x\\"y"], "t": true, "z": null}'), {
      big: 9007199254740993n,
      n: [1, 2.5, -300, 'x"y'],
      t: true,
      z: null,
    });
    assert.equal(parseJson("-9223372036854775808"), -9223372036854775808n);
    assert.throws(() => parseJson("{"), SyntaxError);
    assert.throws(() => parseJson("[1,]"), SyntaxError);
    assert.equal(stringifyJson({ big: 9007199254740993n, a: [1, "x"] }), '{"big":9007199254740993,"a":[1,"x"]}');
  });

  it("encodes plain values by kind", () => {
    assert.equal(toValue(3).kind.case, "int");
    assert.equal(toValue(2.5).kind.case, "float");
    assert.equal(toValue(9007199254740993n).kind.value, 9007199254740993n);
    assert.equal(toValue(null).kind.case, "null");
    assert.equal(toValue(new Date(0)).kind.case, "timestamp");
    assert.equal(toValue({ a: 1 }).kind.case, "json");
    assert.equal(val.uuid("AB").kind.value, "ab");
    assert.equal(fromValue(val.numeric("12.50")), "12.50");
    assert.deepEqual(fromValue(val.json({ text: '{"x": 18446744073709551615}' })), { x: 18446744073709551615n });
    assert.equal((fromValue(val.timestamp(new Date(1234))) as Date).getTime(), 1234);
  });
});

describe("frames", () => {
  const client = new ArcanaClient({ transport: {} as never, session: "stream" });
  const host = { cache: client.cache, decode: {}, release: () => {}, resync: () => {} };
  const row = (id: string, title: string) =>
    create(pb.RowSchema, { table: "t", id, fields: { title: toValue(title) } });
  const snapshot = (epoch: bigint, version: bigint, ...rows: [string, string][]) =>
    create(pb.ViewFrameSchema, {
      viewId: "g/1",
      epoch,
      version,
      body: {
        case: "snapshot",
        value: { refs: rows.map(([id]) => ref(id)), rows: rows.map(([id, t]) => row(id, t)), total: BigInt(rows.length) },
      },
    });
  const diff = (epoch: bigint, prev: bigint, value: MessageInitShape<typeof pb.ViewDiffSchema>) =>
    create(pb.ViewFrameSchema, { viewId: "g/1", epoch, version: prev + 1n, prevVersion: prev, body: { case: "diff", value } });

  it("applies diffs in sequence and flags gaps, stale frames and errors", () => {
    const v = new LiveView<{ title: string }>("g", {}, "k", host);
    assert.equal(v.apply(diff(1n, 0n, {})), "gap", "a diff before any snapshot");
    assert.equal(v.apply(snapshot(7n, 3n, ["1", "one"], ["2", "two"])), "applied");
    assert.deepEqual(v.items.map((i) => i.title), ["one", "two"]);
    assert.equal(v.apply(diff(7n, 4n, {})), "gap", "missed version 4");
    assert.equal(v.apply(diff(8n, 3n, {})), "gap", "another epoch");
    const d = diff(7n, 3n, {
      refs: [{ op: pb.PatchOp.ADD, path: "/0", value: ref("3") }, { op: pb.PatchOp.REMOVE, path: "/2" }],
      rows: [row("3", "three")],
      patches: [{ table: "t", id: "1", ops: [{ op: pb.PatchOp.REPLACE, path: "/title", value: toValue("uno") }] }],
      total: 2n,
    });
    assert.equal(v.apply(d), "applied");
    assert.deepEqual(v.items.map((i) => i.title), ["three", "uno"]);
    assert.equal(v.version, 4n);
    assert.equal(client.cache.get("t", "2"), undefined, "row 2 left with its last ref");
    assert.equal(v.apply(d), "stale", "a replayed diff is ignored");
    const err = create(pb.ViewFrameSchema, { viewId: "g/1", epoch: 7n, version: 4n, body: { case: "error", value: { code: 13, message: "boom" } } });
    assert.equal(v.apply(err), "error");
    assert.equal(v.error?.code, 13);
    assert.deepEqual(v.items.map((i) => i.title), ["three", "uno"], "the last good state stays");
    const bad = diff(7n, 4n, { patches: [{ table: "t", id: "99", ops: [] }] });
    assert.equal(v.apply(bad), "gap", "a patch for a row the client lacks");
    assert.equal(v.version, 4n, "nothing applied from a bad diff");
    v.dropRows();
    assert.equal(client.cache.size, 0);
  });
});
