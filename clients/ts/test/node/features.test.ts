// View status while the server is down, optimistic mutations, starting from a
// persist store (catch-up, not a snapshot), and the store contract, against a
// real `arcana demo` server.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { type ArcanaClient, ArcanaError, Code, MemoryStore, createNodeClient } from "../../src/node.js";
import { viewStore } from "../../src/svelte.js";
import { type DemoServer, startDemo } from "../support/server.js";

interface Task {
  id: bigint;
  title: string;
  status: string;
}

let server: DemoServer;
const clients: ArcanaClient[] = [];

function client(opts: Partial<Parameters<typeof createNodeClient>[0]> = {}): ArcanaClient {
  const c = createNodeClient({ baseUrl: server.baseUrl, token: "dev-alice", ...opts });
  clients.push(c);
  return c;
}

before(async () => {
  server = await startDemo();
});

after(async () => {
  for (const c of clients) c.close();
  await server?.stop();
});

describe("optimistic mutations", () => {
  it("show at once, then give way to the server's rows", async () => {
    const c = client();
    const v = c.view<Task>("project_tasks", { project_id: 1 });
    await v.ready();
    const target = v.items[0]!;
    const title = `Optimistic ${Date.now()}`;
    const seen: string[] = [];
    const off = v.subscribe((s) => seen.push(s.items.find((t) => t.id === target.id)!.title));
    const done = c.mutate(
      "update_task",
      { id: target.id, title },
      { optimistic: (tx) => tx.update("tasks", target.id, { title }) },
    );
    // Before any reply: the view shows the change.
    assert.equal(v.items.find((t) => t.id === target.id)!.title, title);
    assert.equal(c.cache.getByKey(`tasks\u0000${target.id}`)!.title, target.title, "the server's row is untouched");
    await done;
    off();
    assert.equal(c.cache.optimistic.size, 0);
    assert.equal(v.items.find((t) => t.id === target.id)!.title, title, "the server's row says the same");
    assert.equal(c.cache.getByKey(`tasks\u0000${target.id}`)!.title, title);
    assert.equal(seen[1], title, "shown before the server answered");

    // An insert shows in the view until the server's row takes its place.
    const n = v.items.length;
    const created = c.mutate<{ id: bigint }>(
      "create_task",
      { project_id: 1, title: "Made optimistically" },
      { optimistic: (tx) => tx.insert(v, "tasks", "temp-1", { id: -1n, title: "Made optimistically", status: "todo" }) },
    );
    assert.equal(v.items.length, n + 1);
    assert.equal(v.items.at(-1)!.id, -1n);
    const r = await created;
    assert.equal(v.items.length, n + 1);
    assert.equal(v.items.at(-1)!.id, r.data.id);
    await c.mutate("delete_task", { id: r.data.id });
    v.close();
  });

  it("roll back when the mutation fails", async () => {
    const c = client();
    const v = c.view<Task>("project_tasks", { project_id: 1 });
    await v.ready();
    const target = v.items[1]!;
    const before = v.items.map((t) => t.title);
    const done = c.mutate(
      "update_task",
      { id: target.id, status: "someday" }, // not one of the allowed statuses
      {
        optimistic: (tx) => {
          tx.update("tasks", target.id, { status: "someday" });
          tx.remove("tasks", v.items[0]!.id);
        },
      },
    );
    assert.equal(v.items.find((t) => t.id === target.id)!.status, "someday");
    assert.equal(v.items.length, before.length - 1);
    await assert.rejects(done, (e: ArcanaError) => e.code === Code.INVALID_ARGUMENT);
    assert.deepEqual(
      v.items.map((t) => t.title),
      before,
    );
    assert.equal(v.items.find((t) => t.id === target.id)!.status, target.status);
    v.close();
  });
});

describe("starting from a persist store", () => {
  it("shows the stored view before any network, then catches up with the missed diffs", async () => {
    const store = new MemoryStore();
    const params = { project_id: 2 };
    // Someone else keeps watching the view, so the server keeps it and its
    // history while no client of this store is connected.
    const keeper = client().view<Task>("project_tasks", params);
    await keeper.ready();
    const first = client({ persist: store, persistDelayMs: 10 });
    const v1 = first.view<Task>("project_tasks", params);
    await v1.ready();
    await first.persistNow();
    const epoch = v1.epoch;
    const version = v1.version;
    first.close();

    // Ten changes while no client of this store is connected.
    const writer = client();
    const ids: bigint[] = [];
    for (let i = 0; i < 10; i++) {
      const r = await writer.mutate<{ id: bigint }>("create_task", { project_id: 2, title: `Missed ${i}` });
      ids.push(r.data.id);
    }

    const second = client({ persist: store });
    const v2 = second.view<Task>("project_tasks", params);
    const restored = await v2.until((s) => s.epoch !== undefined, 5_000);
    assert.equal(restored.status, "stale", "persisted data is shown marked stale");
    assert.equal(restored.version, version);
    assert.equal(second.received.frames, 0, "shown before any frame arrived");
    const live = await v2.until((s) => s.status === "live", 20_000);
    assert.equal(v2.lastSync?.mode, "catch_up");
    assert.equal(v2.lastSync?.frames, 10);
    assert.equal(live.epoch, epoch);
    assert.equal(live.version, version + 10n);
    assert.deepEqual(
      live.items.slice(-10).map((t) => t.title),
      ids.map((_, i) => `Missed ${i}`),
    );
    for (const id of ids) await writer.mutate("delete_task", { id });
    v2.close();
    keeper.close();
  });
});

describe("stores", () => {
  it("a view store calls back at once and follows the view", async () => {
    const c = client();
    const store = viewStore<Task>(c, "projects");
    const seen: string[] = [];
    const off = store.subscribe((s) => seen.push(s.status));
    assert.deepEqual(seen, ["connecting"], "called at once with the current value");
    await store.view!.ready();
    assert.equal(seen.at(-1), "live");
    const late: number[] = [];
    const off2 = store.subscribe((s) => late.push(s.items.length));
    assert.deepEqual(late, [2]);
    off();
    off2();
    assert.equal(store.view, undefined, "closed with the last subscriber");
  });
});

describe("view status", () => {
  it("goes stale with the error when the server stops; new views say why they wait", async () => {
    const own = await startDemo();
    try {
      const c = createNodeClient({ baseUrl: own.baseUrl, token: "dev-alice", backoff: { initialMs: 50, maxMs: 200 } });
      clients.push(c);
      const v = c.view<Task>("project_tasks", { project_id: 1 });
      await v.ready();
      assert.equal(v.status, "live");
      await own.stop();
      const stale = await v.until((s) => s.status === "stale" && s.error !== undefined, 20_000);
      assert.equal(stale.error?.code, Code.UNAVAILABLE);
      assert.ok(stale.items.length > 0);
      const w = c.view("projects");
      const waiting = await w.until((s) => s.error !== undefined, 10_000);
      assert.equal(waiting.status, "connecting");
      assert.equal(waiting.error?.code, Code.UNAVAILABLE);
    } finally {
      await own.stop();
    }
  });
});
