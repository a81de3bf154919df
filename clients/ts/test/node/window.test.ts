// Windows against a real `arcana demo` server: a project of 10,000 tasks
// seeded with SQL, read through `task_window` (ordered by position, id).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { ArcanaClient, Code, type WindowView, createNodeClient } from "../../src/node.js";
import { type DemoServer, startDemo } from "../support/server.js";
import { type Proxy, startProxy } from "../support/proxy.js";

interface Task {
  id: bigint;
  title: string;
  position: bigint;
}

const ROWS = 10_000;
const PROJECT = 100;
let server: DemoServer;
let proxy: Proxy;
/** Task ids in list order (position, id). */
let order: bigint[] = [];
const clients: ArcanaClient[] = [];

function bidi(baseUrl = server.baseUrl): ArcanaClient {
  const c = createNodeClient({ baseUrl, token: "dev-alice", backoff: { initialMs: 50, maxMs: 400 } });
  clients.push(c);
  return c;
}

function web(): ArcanaClient {
  const transport = createGrpcWebTransport({ baseUrl: server.baseUrl, httpVersion: "1.1" });
  const c = new ArcanaClient({ transport, session: "stream", token: "dev-alice" });
  clients.push(c);
  return c;
}

/** The ids a window from index `from` (inclusive) to `to` (exclusive) must show. */
const slice = (from: number, to: number) => order.slice(Math.max(0, from), Math.min(ROWS, to));
const shown = (w: WindowView<Task>) => w.items.map((t) => t.id);

before(async () => {
  server = await startDemo();
  proxy = await startProxy(server.port);
  const db = new pg.Client({ connectionString: server.pgUrl });
  await db.connect();
  try {
    await db.query("INSERT INTO projects (id, workspace_id, name, owner_id) VALUES ($1, 'acme', 'Big list', 'alice')", [
      PROJECT,
    ]);
    // Positions repeat every 1000 rows, so that ties are broken by id.
    await db.query(
      `INSERT INTO tasks (workspace_id, project_id, title, position)
       SELECT 'acme', $1, 'Task ' || i, i % 1000 FROM generate_series(1, $2) AS i`,
      [PROJECT, ROWS],
    );
    const r = await db.query("SELECT id FROM tasks WHERE project_id = $1 ORDER BY position, id", [PROJECT]);
    order = r.rows.map((x: { id: string }) => BigInt(x.id));
  } finally {
    await db.end();
  }
});

after(async () => {
  for (const c of clients) c.close();
  await proxy?.close();
  await server?.stop();
});

describe("windows", () => {
  it("a window shows the first or last rows in list order, with its edges", async () => {
    const c = bidi();
    const first = c.window<Task>("task_window", { project_id: PROJECT }, { limit: 20 });
    const s = await first.ready();
    assert.deepEqual(shown(first), slice(0, 20));
    assert.equal(s.hasBefore, false);
    assert.equal(s.hasAfter, true);
    const last = c.window<Task>("task_window", { project_id: PROJECT }, { limit: 20, direction: "before" });
    const e = await last.ready();
    assert.deepEqual(shown(last), slice(ROWS - 20, ROWS));
    assert.equal(e.hasBefore, true);
    assert.equal(e.hasAfter, false);
    // No window: the graph's default one (50 rows from the start); a move keeps its limit.
    const plain = c.window<Task>("task_window", { project_id: PROJECT });
    await plain.ready();
    assert.deepEqual(shown(plain), slice(0, 50));
    await plain.reanchor(await plain.cursorOf(49));
    assert.deepEqual(shown(plain), slice(50, 100));
    assert.throws(() => c.window("task_window", { project_id: PROJECT }, { cursor: [1n, 1n] }), RangeError);
    plain.close();
    first.close();
    last.close();
  });

  it("reanchor moves the window in place under the same view id, and it stays live", async () => {
    const c = bidi();
    const w = c.window<Task>("task_window", { project_id: PROJECT }, { limit: 20 });
    await w.ready();
    const id = w.id;
    const moved = await w.reanchor(await w.cursorOf(19));
    assert.deepEqual(shown(w), slice(20, 40));
    assert.equal(w.id, id, "same view id");
    assert.equal(moved.hasBefore, true);
    assert.equal(moved.moving, false);
    const around = await w.reanchor(await w.cursorOf(10), { direction: "around", limit: 10 });
    assert.deepEqual(around.items.map((t) => t.id), slice(30 - 5, 30 + 5));
    // A refused move (a cursor of the wrong length) leaves the window where it was.
    await assert.rejects(w.reanchor([1n]), { code: Code.INVALID_ARGUMENT });
    assert.deepEqual(shown(w), slice(25, 35));
    assert.equal(w.window.direction, "around");
    // A write inside the window shows.
    const target = order[28]!;
    await c.mutate("update_task", { id: target, title: "Renamed in the window" });
    assert.equal(w.items.find((t) => t.id === target)?.title, "Renamed in the window");
    w.close();
  });

  it("loadMore grows the limit, loadPrevious reaches back, and past the largest window both slide", async () => {
    const c = bidi();
    const w = c.window<Task>("task_window", { project_id: PROJECT }, { limit: 10, cursor: [], direction: "after" });
    await w.ready();
    await w.loadMore(15);
    assert.deepEqual(shown(w), slice(0, 25));
    assert.equal(w.window.limit, 25);
    await w.reanchor(await w.cursorOf(20), { limit: 10, inclusive: true });
    assert.deepEqual(shown(w), slice(20, 30));
    await w.loadPrevious(5);
    assert.deepEqual(shown(w), slice(15, 30));
    assert.equal(w.window.direction, "before");
    // The demo's largest window is 5000 rows.
    const big = c.window<Task>("task_window", { project_id: PROJECT }, { limit: 4995 });
    await big.ready();
    assert.deepEqual(shown(big), slice(0, 4995));
    await big.loadMore(10);
    assert.deepEqual(shown(big), slice(5, 5005), "slid by the 5 rows that did not fit");
    await big.loadPrevious(3);
    assert.deepEqual(shown(big), slice(2, 5002), "slid back by 3");
    w.close();
    big.close();
  });

  it("of two handles sharing a window, the one that moves subscribes anew and the other stays", async () => {
    const c = bidi();
    const a = c.window<Task>("task_window", { project_id: PROJECT }, { limit: 10 });
    const b = c.window<Task>("task_window", { project_id: PROJECT }, { limit: 10 });
    await Promise.all([a.ready(), b.ready()]);
    assert.equal(a.id, b.id);
    await b.reanchor(await b.cursorOf(9));
    assert.deepEqual(shown(b), slice(10, 20));
    assert.deepEqual(shown(a), slice(0, 10), "the other handle did not move");
    assert.notEqual(a.id, b.id);
    // Both stay live: a write to a row of each shows in its window.
    await c.mutate("update_task", { id: order[3]!, title: "Seen by a" });
    await c.mutate("update_task", { id: order[13]!, title: "Seen by b" });
    assert.equal(a.items[3]?.title, "Seen by a");
    assert.equal(b.items[3]?.title, "Seen by b");
    a.close();
    // b now holds its window alone, so it moves in place.
    const id = b.id;
    await b.reanchor(await b.cursorOf(9));
    assert.deepEqual(shown(b), slice(20, 30));
    assert.equal(b.id, id);
    b.close();
  });

  it("a window moved in place does not keep others from the window it left", async () => {
    const c = bidi();
    const a = c.window<Task>("task_window", { project_id: PROJECT }, { limit: 10 });
    await a.ready();
    const id = a.id;
    await a.reanchor(await a.cursorOf(9));
    assert.equal(a.id, id, "moved in place");
    // The server knows the moved subscription by the id of the window it
    // left; opening that window again must still work.
    const b = c.window<Task>("task_window", { project_id: PROJECT }, { limit: 10 });
    await b.ready();
    assert.deepEqual(shown(b), slice(0, 10));
    assert.deepEqual(shown(a), slice(10, 20), "the moved window stays");
    await c.mutate("update_task", { id: order[15]!, title: "Still live after the swap" });
    assert.equal(a.items[5]?.title, "Still live after the swap");
    await c.mutate("update_task", { id: order[5]!, title: "Live in b" });
    assert.equal(b.items[5]?.title, "Live in b");
    a.close();
    b.close();
  });

  it("a moved window comes back after a reconnect as the window it was moved to", async () => {
    const c = bidi(proxy.baseUrl);
    const w = c.window<Task>("task_window", { project_id: PROJECT }, { limit: 10 });
    await w.ready();
    await w.reanchor(await w.cursorOf(9));
    assert.deepEqual(shown(w), slice(10, 20));
    await proxy.cut();
    await w.until((s) => s.status === "stale", 10_000);
    const other = bidi();
    await other.mutate("update_task", { id: order[12]!, title: "Renamed while away" });
    await proxy.restore();
    const back = await w.until((s) => s.status === "live", 20_000);
    assert.deepEqual(back.items.map((t) => t.id), slice(10, 20));
    assert.equal(back.items[2]?.title, "Renamed while away");
    // Still live on the new session, whatever id the server gave it there.
    await c.mutate("update_task", { id: order[14]!, title: "Live after the sync" });
    assert.equal(w.items[4]?.title, "Live after the sync");
    w.close();
  });

  it("a snapshot too big for one frame arrives in parts and is shown whole, once", async () => {
    // 5000 tasks with 200-character titles: more than the server's 1 MiB part.
    const db = new pg.Client({ connectionString: server.pgUrl });
    await db.connect();
    let ids: bigint[];
    try {
      await db.query("INSERT INTO projects (id, workspace_id, name, owner_id) VALUES (101, 'acme', 'Wide', 'alice')");
      await db.query(
        `INSERT INTO tasks (workspace_id, project_id, title, position)
         SELECT 'acme', 101, rpad('Wide ' || i, 200, '.'), i FROM generate_series(1, 5000) AS i`,
      );
      const r = await db.query("SELECT id FROM tasks WHERE project_id = 101 ORDER BY position, id");
      ids = r.rows.map((x: { id: string }) => BigInt(x.id));
    } finally {
      await db.end();
    }
    const c = bidi();
    await c.connect();
    const before = c.received.frames;
    const w = c.window<Task>("task_window", { project_id: 101 }, { limit: 5000 });
    const lengths: number[] = [];
    w.subscribe((s) => lengths.push(s.items.length));
    await w.ready();
    assert.ok(c.received.frames - before >= 2, `the snapshot came in ${c.received.frames - before} frame(s)`);
    assert.deepEqual(shown(w), ids);
    assert.deepEqual(
      lengths.filter((n) => n > 0),
      [5000],
      "listeners saw the whole list, never a part",
    );
    w.close();
  });

  it("over grpc-web a move lands whichever of reply and diff comes first", async () => {
    const c = web();
    const w = c.window<Task>("task_window", { project_id: PROJECT }, { limit: 10 });
    await w.ready();
    for (let i = 1; i <= 5; i++) {
      await w.reanchor(await w.cursorOf(9));
      assert.deepEqual(shown(w), slice(10 * i, 10 * i + 10));
    }
    await w.loadPrevious(5);
    assert.deepEqual(shown(w), slice(45, 60));
    w.close();
  });
});
