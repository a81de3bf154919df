// Windows, snapshot parts and re-anchor diffs with hand-built frames: the
// state code alone, and the client driven through a scripted session.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type MessageInitShape, create } from "@bufbuild/protobuf";
import {
  ArcanaClient,
  ArcanaError,
  Code,
  LiveView,
  SnapshotParts,
  pb,
  toValue,
  val,
  windowSpec,
} from "../../src/index.js";

const ref = (id: string) => create(pb.RefSchema, { table: "t", id });
const row = (id: string, pos = Number(id)) =>
  create(pb.RowSchema, { table: "t", id, fields: { title: toValue(`row ${id}`), pos: val.int(pos) } });
const ids = (items: readonly { title?: unknown }[]) => items.map((i) => String(i.title).replace("row ", ""));

interface SnapExtra {
  more?: boolean;
  total?: bigint;
  window?: { hasBefore: boolean; hasAfter: boolean };
}
function snapshotFrame(viewId: string, epoch: bigint, version: bigint, rowIds: string[], extra: SnapExtra = {}) {
  return create(pb.ViewFrameSchema, {
    viewId,
    epoch,
    version,
    body: { case: "snapshot", value: { refs: rowIds.map(ref), rows: rowIds.map((i) => row(i)), ...extra } },
  });
}
function diffFrame(
  viewId: string,
  at: { epoch: bigint; version: bigint; prevVersion: bigint; prevEpoch?: bigint },
  value: MessageInitShape<typeof pb.ViewDiffSchema>,
) {
  return create(pb.ViewFrameSchema, { viewId, ...at, body: { case: "diff", value } });
}
/** The ref ops turning `from` into `to` (remove all, add all: enough for tests). */
function replaceAll(from: string[], to: string[]) {
  return [
    ...from.map(() => ({ op: pb.PatchOp.REMOVE, path: "/0" })),
    ...to.map((id) => ({ op: pb.PatchOp.ADD, path: "/-", value: ref(id) })),
  ];
}

describe("snapshot parts", () => {
  it("holds parts back until the last one, then yields the whole snapshot once", () => {
    const parts = new SnapshotParts();
    const a = snapshotFrame("g/1", 5n, 9n, ["1", "2"], { more: true, total: 5n });
    const b = snapshotFrame("g/1", 5n, 9n, ["3", "4"], { more: true });
    const c = snapshotFrame("g/1", 5n, 9n, ["5"], { window: { hasBefore: false, hasAfter: true } });
    assert.equal(parts.push(a), undefined);
    assert.equal(parts.push(b), undefined);
    assert.equal(parts.waiting, 1);
    const whole = parts.push(c)!;
    assert.equal(parts.waiting, 0);
    assert.equal(whole.body.case, "snapshot");
    const s = whole.body.value as pb.Snapshot;
    assert.deepEqual(s.refs.map((r) => r.id), ["1", "2", "3", "4", "5"]);
    assert.deepEqual(s.rows.map((r) => r.id), ["1", "2", "3", "4", "5"]);
    assert.equal(s.total, 5n);
    assert.equal(s.window?.hasAfter, true);
    assert.equal(s.more, false);
  });

  it("drops the parts of a snapshot abandoned for a newer version or another frame", () => {
    const parts = new SnapshotParts();
    assert.equal(parts.push(snapshotFrame("g/1", 5n, 9n, ["1"], { more: true })), undefined);
    // A newer snapshot starts: the old parts never complete.
    assert.equal(parts.push(snapshotFrame("g/1", 5n, 10n, ["7"], { more: true })), undefined);
    const whole = parts.push(snapshotFrame("g/1", 5n, 10n, ["8"]))!;
    assert.deepEqual((whole.body.value as pb.Snapshot).refs.map((r) => r.id), ["7", "8"]);
    // Another view's frames pass through untouched meanwhile.
    assert.equal(parts.push(snapshotFrame("g/1", 5n, 11n, ["1"], { more: true })), undefined);
    const other = snapshotFrame("g/2", 1n, 1n, ["2"]);
    assert.equal(parts.push(other), other);
    const d = diffFrame("g/1", { epoch: 5n, version: 12n, prevVersion: 11n }, {});
    assert.equal(parts.push(d), d, "a diff between parts ends them");
    assert.equal(parts.waiting, 0);
  });
});

describe("window state", () => {
  const client = new ArcanaClient({ transport: {} as never, session: "stream" });
  const host = { cache: client.cache, decode: {}, release: () => {}, resync: () => {} };
  const w1 = windowSpec({ limit: 3 });
  const w2 = windowSpec({ limit: 3, cursor: [3n], direction: "after" });

  it("applies a re-anchor diff on (prev_epoch, prev_version) and continues on the new epoch", () => {
    const v = new LiveView<{ title: string }>("g", {}, "k", host, w1);
    v.apply(snapshotFrame("g/1", 5n, 9n, ["1", "2", "3"], { window: { hasBefore: false, hasAfter: true } }));
    assert.deepEqual(v.edges, { hasBefore: false, hasAfter: true });
    const move = diffFrame(
      "g/1",
      { epoch: 8n, version: 2n, prevVersion: 9n, prevEpoch: 5n },
      { refs: replaceAll(["1", "2", "3"], ["4", "5", "6"]), rows: ["4", "5", "6"].map((i) => row(i)), window: { hasBefore: true, hasAfter: false } },
    );
    const wrongBase = diffFrame("g/1", { epoch: 8n, version: 2n, prevVersion: 9n, prevEpoch: 4n }, {});
    assert.equal(v.apply(wrongBase), "gap", "prev_epoch names another life");
    assert.equal(v.apply(move), "applied");
    assert.deepEqual(ids(v.items), ["4", "5", "6"]);
    assert.equal(v.epoch, 8n);
    assert.equal(v.version, 2n);
    assert.deepEqual(v.snapshot.edges, { hasBefore: true, hasAfter: false });
    assert.equal(v.apply(move), "stale", "the same re-anchor diff again");
    const next = diffFrame("g/1", { epoch: 8n, version: 3n, prevVersion: 2n }, {
      patches: [{ table: "t", id: "5", ops: [{ op: pb.PatchOp.REPLACE, path: "/pos", value: val.int(50) }] }],
    });
    assert.equal(v.apply(next), "applied", "frames continue from the new epoch");
    assert.deepEqual(v.snapshot.edges, { hasBefore: true, hasAfter: false }, "edges kept when a diff has none");
    // Cursors come from the wire values, patches included.
    assert.deepEqual(v.wireFields(ref("5"), ["pos"]), [val.int(50)]);
    assert.equal(v.wireFields(ref("1"), ["pos"]), undefined, "rows that left are forgotten");
    v.dropRows();
  });

  it("takes the new window when the view reaches the reply's position, whichever comes first", () => {
    const move = (v: LiveView<any>) =>
      v.apply(
        diffFrame("g/1", { epoch: 5n, version: 10n, prevVersion: 9n }, {
          refs: replaceAll(["1", "2", "3"], ["4", "5", "6"]),
          rows: ["4", "5", "6"].map((i) => row(i)),
          window: { hasBefore: true, hasAfter: true },
        }),
      );
    // Reply first (bidi): the window is the old one until the diff is in.
    const a = new LiveView("g", {}, "a", host, w1);
    a.apply(snapshotFrame("g/1", 5n, 9n, ["1", "2", "3"]));
    a.moving = { window: w2 };
    a.reanchored(5n, 10n);
    assert.equal(a.window, w1);
    assert.equal(move(a), "applied");
    assert.equal(a.window, w2);
    assert.equal(a.moving, undefined);
    a.dropRows();
    // Diff first (grpc-web: the stream beat the unary reply).
    const b = new LiveView("g", {}, "b", host, w1);
    b.apply(snapshotFrame("g/1", 5n, 9n, ["1", "2", "3"]));
    b.moving = { window: w2 };
    const told: string[][] = [];
    b.subscribe((x) => told.push(ids(x.items as { title?: unknown }[])));
    assert.equal(move(b), "applied");
    assert.equal(b.window, w1, "no reply yet: which diff moved it is unknown");
    assert.equal(told.length, 1, "listeners never see the new rows under the old window");
    b.reanchored(5n, 10n);
    assert.equal(b.window, w2);
    assert.deepEqual(told, [["1", "2", "3"], ["4", "5", "6"]]);
    b.dropRows();
  });
});

/** A session whose replies the test scripts; frames are pushed by the test. */
class ScriptedSession {
  info = create(pb.SessionOpenedSchema, { sessionId: "s1" });
  subscribes: { graph: string; window?: pb.Window }[] = [];
  reanchors: { viewId: string; window: pb.Window }[] = [];
  syncs: pb.SyncView[][] = [];
  onSubscribe: (w: pb.Window | undefined) => pb.SubscribeResponse = () => {
    throw new Error("unexpected subscribe");
  };
  onReanchor: (viewId: string, w: pb.Window) => Promise<pb.ReanchorResponse> = () => {
    throw new Error("unexpected reanchor");
  };
  async subscribe(graph: string, _params: unknown, window?: pb.Window) {
    this.subscribes.push({ graph, window });
    return this.onSubscribe(window);
  }
  async unsubscribe() {}
  async reanchor(viewId: string, window: pb.Window) {
    this.reanchors.push({ viewId, window });
    return this.onReanchor(viewId, window);
  }
  async sync(views: pb.SyncView[]) {
    this.syncs.push(views);
    return create(pb.SyncResponseSchema, {});
  }
  async mutate(): Promise<never> {
    throw new Error("unexpected mutate");
  }
  close() {}
}

/** A client already "connected" to a scripted session. */
function scripted() {
  const client = new ArcanaClient({ transport: {} as never, session: "stream" });
  const s = new ScriptedSession();
  const c = client as unknown as {
    conn: { _session: unknown; _status: string };
    frames: { onFrames(f: pb.ViewFrame[], b: boolean): void };
  };
  c.conn._session = s;
  c.conn._status = "open";
  const push = (...frames: pb.ViewFrame[]) => c.frames.onFrames(frames, frames.length > 1);
  return { client, s, push };
}

const tick = () => new Promise((r) => setImmediate(r));

describe("window handles", () => {
  it("a sole holder re-anchors in place: same view id, one diff, rows never half moved", async () => {
    const { client, s, push } = scripted();
    s.onSubscribe = () => create(pb.SubscribeResponseSchema, { viewId: "g/a", epoch: 5n, version: 1n });
    const h = client.window<{ title: string }>("g", {}, { limit: 3 });
    await tick();
    push(snapshotFrame("g/a", 5n, 1n, ["1", "2"], { more: true }));
    assert.equal(h.snapshot.epoch, undefined, "a partial snapshot is not shown");
    push(snapshotFrame("g/a", 5n, 1n, ["3"], { window: { hasBefore: false, hasAfter: true } }));
    const first = await h.ready();
    assert.deepEqual(ids(first.items), ["1", "2", "3"]);
    assert.equal(first.hasAfter, true);
    let release!: () => void;
    s.onReanchor = (viewId) =>
      new Promise((res) => {
        release = () => res(create(pb.ReanchorResponseSchema, { viewId, epoch: 5n, version: 2n, prevEpoch: 5n, prevVersion: 1n }));
      });
    const seen: string[][] = [];
    h.subscribe((x) => seen.push(ids(x.items)));
    const moved = h.loadMore(2);
    await tick();
    assert.equal(s.reanchors.length, 1);
    assert.equal(s.reanchors[0]!.viewId, "g/a");
    assert.equal(s.reanchors[0]!.window.limit, 5, "loadMore grows the limit at the same cursor");
    assert.equal(h.snapshot.moving, true);
    push(
      diffFrame("g/a", { epoch: 5n, version: 2n, prevVersion: 1n }, {
        refs: [{ op: pb.PatchOp.ADD, path: "/-", value: ref("4") }, { op: pb.PatchOp.ADD, path: "/-", value: ref("5") }],
        rows: [row("4"), row("5")],
        window: { hasBefore: false, hasAfter: false },
      }),
    );
    release();
    const after = await moved;
    assert.deepEqual(ids(after.items), ["1", "2", "3", "4", "5"]);
    assert.equal(after.window.limit, 5);
    assert.equal(after.hasAfter, false);
    assert.equal(after.moving, false);
    assert.equal(h.id, "g/a");
    assert.equal(s.subscribes.length, 1, "no second subscription");
    for (const shown of seen) assert.ok(shown.length === 3 || shown.length === 5, `never a partial list: ${shown}`);
    // Sync after a reconnect names the window held now.
    const sv = (client as unknown as { sync: { syncView(v: unknown): pb.SyncView } }).sync.syncView(
      (h as unknown as { view: unknown }).view,
    );
    assert.equal(sv.window?.limit, 5);
    assert.equal(sv.epoch, 5n);
    h.close();
    client.close();
  });

  it("a handle sharing its view subscribes to the new window and the other handle stays", async () => {
    const { client, s, push } = scripted();
    s.onSubscribe = (w) =>
      create(pb.SubscribeResponseSchema, { viewId: w?.cursor.length ? "g/b" : "g/a", epoch: 5n, version: 1n });
    const one = client.window<{ title: string }>("g", {}, { limit: 2 });
    const two = client.window<{ title: string }>("g", {}, { limit: 2 });
    await tick();
    assert.equal(s.subscribes.length, 1, "one view for equal windows");
    push(snapshotFrame("g/a", 5n, 1n, ["1", "2"], { window: { hasBefore: false, hasAfter: true } }));
    await one.ready();
    const moved = two.reanchor([2n]);
    await tick();
    assert.equal(s.reanchors.length, 0, "a shared view is not moved");
    assert.equal(s.subscribes.length, 2);
    assert.deepEqual(s.subscribes[1]!.window?.cursor, [val.int(2)]);
    push(snapshotFrame("g/b", 5n, 1n, ["3", "4"], { window: { hasBefore: true, hasAfter: false } }));
    const after = await moved;
    assert.deepEqual(ids(after.items), ["3", "4"]);
    assert.equal(two.id, "g/b");
    assert.deepEqual(ids(one.items), ["1", "2"], "the other handle did not move");
    assert.equal(one.id, "g/a");
    one.close();
    two.close();
    client.close();
  });

  it("a re-anchor answered ALREADY_EXISTS falls back to subscribing", async () => {
    const { client, s, push } = scripted();
    s.onSubscribe = (w) =>
      create(pb.SubscribeResponseSchema, { viewId: w?.cursor.length ? "g/b" : "g/a", epoch: 5n, version: 1n });
    s.onReanchor = async () => {
      throw new ArcanaError(Code.ALREADY_EXISTS, "this session already holds that window as g/b");
    };
    const h = client.window<{ title: string }>("g", {}, { limit: 2 });
    await tick();
    push(snapshotFrame("g/a", 5n, 1n, ["1", "2"]));
    await h.ready();
    const moved = h.reanchor([2n]);
    await tick();
    await tick();
    assert.equal(s.reanchors.length, 1);
    assert.equal(s.subscribes.length, 2, "fell back to a subscribe");
    push(snapshotFrame("g/b", 5n, 1n, ["3", "4"]));
    const after = await moved;
    assert.deepEqual(ids(after.items), ["3", "4"]);
    assert.equal(h.id, "g/b");
    h.close();
    client.close();
  });

  it("a session lost mid re-anchor syncs onto the new window from scratch", async () => {
    const { client, s, push } = scripted();
    s.onSubscribe = () => create(pb.SubscribeResponseSchema, { viewId: "g/a", epoch: 5n, version: 1n });
    s.onReanchor = async () => {
      throw new ArcanaError(Code.UNAVAILABLE, "session lost before the reply");
    };
    const h = client.window<{ title: string }>("g", {}, { limit: 2 });
    await tick();
    push(snapshotFrame("g/a", 5n, 1n, ["1", "2"]));
    await h.ready();
    const moved = h.reanchor([2n]);
    await tick();
    await tick();
    assert.equal(s.syncs.length, 1);
    const sv = s.syncs[0]![0]!;
    assert.equal(sv.epoch, 0n, "no position: a snapshot of the new window");
    assert.deepEqual(sv.window?.cursor, [val.int(2)]);
    push(snapshotFrame("g/a", 6n, 1n, ["3", "4"]));
    const after = await moved;
    assert.deepEqual(ids(after.items), ["3", "4"]);
    assert.deepEqual(after.window.cursor, [val.int(2)]);
    h.close();
    client.close();
  });
});
