// What useRow and useStatus stand on, without a server: RowCache.watch and
// clientStatus / onClientStatus, driven by hand-built frames.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { ArcanaClient, ArcanaError, LiveView, clientStatus, onClientStatus, pb, toValue } from "../../src/index.js";

const tick = () => new Promise<void>((r) => queueMicrotask(r));
const ref = (id: string) => create(pb.RefSchema, { table: "t", id });
const row = (id: string, title: string) => create(pb.RowSchema, { table: "t", id, fields: { title: toValue(title) } });
const snapshot = (version: bigint, ...rows: [string, string][]) =>
  create(pb.ViewFrameSchema, {
    viewId: "g/1",
    epoch: 1n,
    version,
    body: {
      case: "snapshot",
      value: { refs: rows.map(([id]) => ref(id)), rows: rows.map(([id, t]) => row(id, t)), total: BigInt(rows.length) },
    },
  });

function setup() {
  const client = new ArcanaClient({ transport: {} as never, session: "stream" });
  const host = { cache: client.cache, decode: {}, release: () => {}, resync: () => {} };
  return { client, host };
}

describe("RowCache.watch", () => {
  it("tells a watcher once per frame, after it: arrival, change, departure, optimistic layers", async () => {
    const { client, host } = setup();
    const v = new LiveView<{ title: string }>("g", {}, "k", host);
    const seen: (string | undefined)[] = [];
    const stop = client.cache.watch("t", "2", () => seen.push(client.cache.get("t", "2")?.title as string | undefined));

    v.apply(snapshot(1n, ["1", "one"], ["2", "two"]));
    assert.deepEqual(seen, [], "not while the frame is applied");
    await tick();
    assert.deepEqual(seen, ["two"]);

    v.apply(snapshot(2n, ["1", "uno"], ["2", "dos"]));
    v.apply(snapshot(3n, ["1", "uno"], ["2", "deux"]));
    await tick();
    assert.deepEqual(seen, ["two", "deux"], "two frames before anyone read: one call");

    v.apply(snapshot(4n, ["1", "un"]));
    await tick();
    assert.deepEqual(seen, ["two", "deux", undefined], "the row left with its last ref");

    v.apply(snapshot(5n, ["1", "un"], ["2", "zwei"]));
    await tick();
    const layer = { rows: new Map([["t\u00002", { title: "mine" }]]), removed: new Set<string>(), inserts: [] };
    client.cache.addLayer(layer);
    await tick();
    client.cache.removeLayer(layer);
    await tick();
    assert.deepEqual(seen, ["two", "deux", undefined, "zwei", "mine", "zwei"]);

    stop();
    v.apply(snapshot(6n, ["2", "drei"]));
    await tick();
    assert.equal(seen.length, 6, "no calls after stop");
  });
});

describe("clientStatus", () => {
  it("lists open views with their status and error, stays the same object until something changes", async () => {
    const { client, host } = setup();
    let calls = 0;
    const off = onClientStatus(client, () => calls++);
    const s0 = clientStatus(client);
    assert.deepEqual(s0, { status: "idle", error: undefined, views: [] });

    const a = new LiveView("a", { x: 1 }, "ka", host);
    const b = new LiveView("b", {}, "kb", host);
    assert.equal(calls, 0, "calls come in a microtask");
    await tick();
    assert.equal(calls, 1, "two views opened: one call");
    const s1 = clientStatus(client);
    assert.notEqual(s1, s0);
    assert.equal(clientStatus(client), s1, "unchanged: the same object");
    assert.deepEqual(
      s1.views.map((v) => [v.graph, v.params, v.status, v.windowed]),
      [
        ["a", { x: 1 }, "connecting", false],
        ["b", {}, "connecting", false],
      ],
    );

    a.apply(snapshot(1n, ["1", "one"]));
    const refused = new ArcanaError(5, "unknown graph");
    b.setStatus("error", refused);
    await tick();
    assert.equal(calls, 2);
    assert.deepEqual(
      clientStatus(client).views.map((v) => [v.graph, v.status, v.error?.codeName]),
      [
        ["a", "live", undefined],
        ["b", "error", "NOT_FOUND"],
      ],
    );

    // A change of rows only is not a change of status.
    a.apply(snapshot(2n, ["1", "uno"]));
    await tick();
    assert.equal(calls, 2);

    b.setStatus("closed");
    await tick();
    assert.equal(calls, 3);
    assert.deepEqual(clientStatus(client).views.map((v) => v.graph), ["a"]);

    // (These views were made by hand, so the client does not close them.)
    a.setStatus("closed");
    client.close();
    await tick();
    assert.equal(calls, 4, "a view closed and the client closed: one call");
    const s = clientStatus(client);
    assert.equal(s.status, "closed");
    assert.deepEqual(s.views, []);
    off();
    new LiveView("c", {}, "kc", host);
    await tick();
    assert.equal(calls, 4, "no calls after off");
  });
});
