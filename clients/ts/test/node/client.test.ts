// The Node client against a real `arcana demo` server (bidi Connect sessions).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import pg from "pg";
import { type ArcanaClient, ArcanaError, Code, createNodeClient } from "../../src/node.js";
import { type DemoServer, startDemo } from "../support/server.js";
import { type Proxy, startProxy } from "../support/proxy.js";

interface Task {
  id: bigint;
  title: string;
  status: string;
  position: bigint;
  points: bigint | null;
  estimate: string | null;
  meta: Record<string, unknown>;
  assignee?: { id: string; name: string };
}

let server: DemoServer;
const clients: ArcanaClient[] = [];

function client(token: string | undefined, baseUrl = server.baseUrl, fast = false): ArcanaClient {
  const c = createNodeClient({
    baseUrl,
    token,
    backoff: fast ? { initialMs: 50, maxMs: 400 } : undefined,
  });
  clients.push(c);
  return c;
}

const titles = (items: readonly Task[]) => items.map((t) => t.title);

before(async () => {
  server = await startDemo();
});

after(async () => {
  for (const c of clients) c.close();
  await server?.stop();
});

describe("views", () => {
  it("subscribing yields a snapshot with nested refs and a total", async () => {
    const c = client("dev-alice");
    const v = c.view<Task>("project_tasks", { project_id: 1 });
    const s = await v.ready();
    assert.equal(s.status, "live");
    assert.match(v.id!, /^project_tasks\/[0-9a-f]+$/);
    assert.ok(s.items.length >= 4);
    assert.equal(s.total, BigInt(s.items.length));
    const first = s.items[0]!;
    assert.equal(first.title, "Write the announcement");
    assert.equal(typeof first.id, "bigint");
    assert.deepEqual(first.assignee, { id: "alice", name: "Alice Liddell" });
    assert.equal(first.estimate, "3.50");
    assert.deepEqual(first.meta, { labels: ["writing"] });
    // Positions are in order.
    const pos = s.items.map((t) => t.position);
    assert.deepEqual([...pos].sort((a, b) => (a < b ? -1 : 1)), pos);
    // Rows are normalized: users are cached once, whatever the number of tasks.
    assert.ok(c.cache.get("users", "alice"));
    assert.equal(c.cache.holders("tasks", String(first.id)), 1);
    v.close();
    assert.equal(v.status, "closed");
    assert.equal(c.cache.size, 0);
  });

  it("a mutation's diff is applied before the mutation resolves, and edits and deletes follow", async () => {
    const c = client("dev-alice");
    const v = c.view<Task>("project_tasks", { project_id: 1 });
    const before = await v.ready();
    const title = `Created ${Date.now()}`;
    const created = await c.mutate<{ id: bigint }>("create_task", { project_id: 1, title, assignee_id: "bob" });
    assert.equal(typeof created.data.id, "bigint");
    // Read-your-writes on the session: no waiting needed.
    assert.equal(v.items.length, before.items.length + 1);
    assert.equal(v.total, before.total! + 1n);
    const added = v.items.at(-1)!;
    assert.equal(added.title, title);
    assert.equal(added.id, created.data.id);
    assert.deepEqual(added.assignee, { id: "bob", name: "Bob Builder" });
    assert.ok(v.version > before.version);

    // A field update patches only that row; untouched items keep their identity.
    const untouched = v.items[0];
    await c.mutate("update_task", { id: created.data.id, title: `${title} (edited)`, status: "doing" });
    const edited = v.items.find((t) => t.id === created.data.id)!;
    assert.equal(edited.title, `${title} (edited)`);
    assert.equal(edited.status, "doing");
    assert.equal(v.items[0], untouched);

    // Moving reorders the refs.
    await c.mutate("move_task", { id: created.data.id, position: 0 });
    assert.equal(v.items[0]!.id, created.data.id);
    assert.deepEqual(titles(v.items).slice(1), titles(before.items));

    // Deleting removes the ref and lets the row leave the cache.
    await c.mutate("delete_task", { id: created.data.id });
    assert.deepEqual(titles(v.items), titles(before.items));
    assert.equal(v.total, before.total);
    assert.equal(c.cache.get("tasks", String(created.data.id)), undefined);
    v.close();
  });

  it("views share the row cache and see each other's row changes", async () => {
    const c = client("dev-alice");
    const all = c.view<Task>("project_tasks", { project_id: 1 });
    const todo = c.view<Task>("project_tasks", { project_id: 1, status: "todo" });
    await Promise.all([all.ready(), todo.ready()]);
    assert.notEqual(all.id, todo.id);
    const shared = todo.items[0]!;
    assert.equal(c.cache.holders("tasks", String(shared.id)), 2);
    // The same params spelled again share the view.
    const again = c.view<Task>("project_tasks", { status: "todo", project_id: 1 });
    assert.equal(again, todo);
    again.close();
    assert.equal(todo.status, "live");

    let calls = 0;
    const off = all.subscribe(() => calls++);
    await c.mutate("update_task", { id: shared.id, title: "Book the venue (shared)" });
    assert.equal(todo.items.find((t) => t.id === shared.id)!.title, "Book the venue (shared)");
    assert.equal(all.items.find((t) => t.id === shared.id)!.title, "Book the venue (shared)");
    assert.ok(calls >= 1);
    off();

    // Moving out of the filter drops the row from one view only.
    await c.mutate("update_task", { id: shared.id, status: "doing" });
    assert.equal(todo.items.find((t) => t.id === shared.id), undefined);
    assert.equal(c.cache.holders("tasks", String(shared.id)), 1);
    todo.close();
    assert.ok(c.cache.get("tasks", String(shared.id)));
    await c.mutate("update_task", { id: shared.id, title: "Book the venue", status: "todo" });
    all.close();
    assert.equal(c.cache.size, 0);
  });

  it("two spellings of the same params share one server view", async () => {
    const c = client("dev-alice");
    const a = c.view<Task>("project_tasks", { project_id: 1 });
    const b = c.view<Task>("project_tasks", { project_id: 1, limit: 50 });
    await Promise.all([a.ready(), b.ready()]);
    assert.notEqual(a, b);
    assert.equal(a.id, b.id, "the default limit makes the same view");
    assert.deepEqual(titles(a.items), titles(b.items));
    // Closing one must not unsubscribe the other from the server.
    a.close();
    const r = await c.mutate<{ id: bigint }>("create_task", { project_id: 1, title: "Twin" });
    assert.equal(b.items.at(-1)!.title, "Twin");
    await c.mutate("delete_task", { id: r.data.id });
    assert.ok(!b.items.some((t) => t.id === r.data.id));
    b.close();
    assert.equal(c.cache.size, 0);
  });

  it("the async iterator yields the state and then each change", async () => {
    const c = client("dev-alice");
    const v = c.view<Task>("project_tasks", { project_id: 2 });
    const seen: number[] = [];
    const done = (async () => {
      for await (const s of v) {
        if (s.status !== "live") continue;
        seen.push(s.items.length);
        if (seen.length === 2) break;
      }
    })();
    await v.ready();
    const r = await c.mutate<{ id: bigint }>("create_task", { project_id: 2, title: "Iterated" });
    await done;
    assert.equal(seen[1], seen[0]! + 1);
    await c.mutate("delete_task", { id: r.data.id });
    v.close();
  });

  it("keeps 64-bit integers and big JSON numbers exact", async () => {
    const c = client("dev-carol");
    const v = c.view<Task>("project_tasks", { project_id: 3n });
    const s = await v.ready();
    const t = s.items.find((x) => x.title === "Take over the world")!;
    assert.equal(t.points, 9007199254740993n);
    assert.equal(typeof t.points, "bigint");
    assert.notEqual(t.points, BigInt(Number.MAX_SAFE_INTEGER) + 1n); // not rounded to 2^53
    assert.equal((t.meta as { big: bigint }).big, 9007199254740993n);
    assert.equal(t.estimate, "9999999999.99");
    assert.equal(c.sessionInfo?.workspaceId, "globex");
    v.close();
  });

  it("writes made in Postgres show up after Notify", async () => {
    const c = client("dev-bob");
    const v = c.view<Task>("project_tasks", { project_id: 2 });
    await v.ready();
    const title = `From SQL ${Date.now()}`;
    const db = new pg.Client({ connectionString: server.pgUrl });
    await db.connect();
    try {
      const r = await db.query("UPDATE tasks SET title = $1 WHERE id = 5 RETURNING id", [title]);
      assert.equal(r.rowCount, 1);
    } finally {
      await db.end();
    }
    await client("dev-service").notify([{ table: "tasks", id: "5", columns: ["title"] }]);
    const s = await v.until((s) => s.items.some((t) => t.title === title), 10_000);
    assert.equal(s.items.find((t) => t.id === 5n)!.title, title);
    v.close();
  });
});

describe("errors carry gRPC codes", () => {
  it("unknown graph: NOT_FOUND", async () => {
    const v = client("dev-alice").view("no_such_graph");
    await assert.rejects(v.ready(), (e: ArcanaError) => e instanceof ArcanaError && e.code === Code.NOT_FOUND);
    assert.equal(v.status, "error");
    assert.equal(v.error?.codeName, "NOT_FOUND");
  });

  it("bad parameter: INVALID_ARGUMENT", async () => {
    const c = client("dev-alice");
    await assert.rejects(c.view("project_tasks", { project_id: 1, status: "someday" }).ready(), { code: Code.INVALID_ARGUMENT });
    await assert.rejects(c.view("project_tasks", {}).ready(), { code: Code.INVALID_ARGUMENT });
    // A failed view does not hurt the session: others still work.
    const ok = c.view("project_tasks", { project_id: 1 });
    await ok.ready();
    await assert.rejects(c.mutate("update_task", { id: 1, status: "someday" }), { code: Code.INVALID_ARGUMENT });
    await assert.rejects(c.mutate("no_such_mutation", {}), { code: Code.NOT_FOUND });
    assert.equal(ok.status, "live");
    ok.close();
  });

  it("no token: UNAUTHENTICATED, for views and mutations", async () => {
    const c = client(undefined);
    const v = c.view("project_tasks", { project_id: 1 });
    await assert.rejects(v.ready(), { code: Code.UNAUTHENTICATED });
    assert.equal(c.status, "failed");
    assert.equal(c.lastError?.code, Code.UNAUTHENTICATED);
    await assert.rejects(c.mutate("create_task", { project_id: 1, title: "x" }), { code: Code.UNAUTHENTICATED });
    await assert.rejects(client("not-a-token").describe(), { code: Code.UNAUTHENTICATED });
  });

  it("read-only token: PERMISSION_DENIED on writes", async () => {
    await assert.rejects(client("dev-bob").mutate("create_task", { project_id: 1, title: "x" }), { code: Code.PERMISSION_DENIED });
  });
});

describe("reconnect", () => {
  let proxy: Proxy;
  before(async () => {
    proxy = await startProxy(server.port);
  });
  after(async () => {
    await proxy?.close();
  });

  it("catches up with the diffs missed while the connection was cut", async () => {
    const c = client("dev-alice", proxy.baseUrl, true);
    const other = client("dev-alice");
    const v = c.view<Task>("project_tasks", { project_id: 2 });
    // The writer also watches the view, so the server keeps it (and its history) alive.
    const watcher = other.view<Task>("project_tasks", { project_id: 2 });
    await Promise.all([v.ready(), watcher.ready()]);
    const epoch = v.epoch;
    const firstSession = c.sessionInfo!.sessionId;

    const statuses: string[] = [];
    c.onStatus((s) => statuses.push(s));
    await proxy.cut();
    await v.until((s) => s.status === "stale", 10_000);

    const title = `While away ${Date.now()}`;
    const created = await other.mutate<{ id: bigint }>("create_task", { project_id: 2, title });
    await other.mutate("update_task", { id: 5, title: "Rotate the keys (again)" });
    assert.ok(!v.items.some((t) => t.title === title));

    await proxy.restore();
    const s = await v.until((s) => s.status === "live" && s.items.some((t) => t.title === title), 20_000);
    assert.equal(v.lastSync?.mode, "catch_up");
    assert.equal(v.lastSync?.frames, 2);
    assert.equal(s.epoch, epoch);
    assert.equal(s.version, watcher.version);
    assert.equal(s.items.find((t) => t.id === 5n)!.title, "Rotate the keys (again)");
    assert.deepEqual(titles(s.items), titles(watcher.items));
    assert.notEqual(c.sessionInfo!.sessionId, firstSession);
    assert.ok(statuses.includes("reconnecting"));
    assert.equal(c.status, "open");

    // The new session is live: later writes arrive as diffs.
    await other.mutate("delete_task", { id: created.data.id });
    await v.until((s) => !s.items.some((t) => t.id === created.data.id), 10_000);
    v.close();
    watcher.close();
  });

  it("applies a catch-up of several diffs, sent as one batch, as one change", async () => {
    const c = client("dev-alice", proxy.baseUrl, true);
    const other = client("dev-alice");
    const v = c.view<Task>("project_tasks", { project_id: 2 });
    // The writer keeps the view (and its history) alive while c is away.
    const watcher = other.view<Task>("project_tasks", { project_id: 2 });
    await Promise.all([v.ready(), watcher.ready()]);
    const created = await other.mutate<{ id: bigint }>("create_task", { project_id: 2, title: "Batched 0" });
    const id = created.data.id;
    const before = await v.until((s) => s.items.some((t) => t.id === id), 10_000);
    const received = c.received;
    const versions: bigint[] = [];
    const off = v.subscribe((s) => versions.push(s.version));

    await proxy.cut();
    await v.until((s) => s.status === "stale", 10_000);
    const writes = 4;
    for (let i = 1; i <= writes; i++) {
      await other.mutate("update_task", { id, title: `Batched ${i}`, status: i % 2 ? "doing" : "todo" });
    }
    const missed = watcher.version - before.version;
    assert.ok(missed >= 2n, `the writes made ${missed} versions`);

    await proxy.restore();
    const s = await v.until((s) => s.status === "live" && s.version === watcher.version, 20_000);
    off();
    assert.deepEqual(v.lastSync, { mode: "catch_up", epoch: before.epoch, version: watcher.version, frames: Number(missed) });
    assert.equal(c.received.frames - received.frames, Number(missed), "only the catch-up diffs arrived");
    assert.equal(c.received.batches - received.batches, 1, "the catch-up diffs arrived as one batch");
    // Listeners saw the batch as one change: no version in between.
    assert.deepEqual([...new Set(versions)], [before.version, watcher.version]);
    assert.equal(s.items.find((t) => t.id === id)!.title, `Batched ${writes}`);

    // The same as what a new subscriber gets.
    const fresh = client("dev-alice").view<Task>("project_tasks", { project_id: 2 });
    const f = await fresh.ready();
    assert.equal(f.version, s.version);
    assert.equal(f.total, s.total);
    assert.deepEqual(s.items, f.items);
    fresh.close();

    await other.mutate("delete_task", { id });
    await v.until((s) => !s.items.some((t) => t.id === id), 10_000);
    v.close();
    watcher.close();
  });

  it("gets a snapshot when the server no longer has the view", async () => {
    const c = client("dev-alice", proxy.baseUrl, true);
    const other = client("dev-alice");
    const v = c.view<Task>("project_tasks", { project_id: 2, status: "todo" });
    await v.ready();
    const epoch = v.epoch;
    await proxy.cut();
    const stale = await v.until((s) => s.status === "stale", 10_000);
    assert.ok(stale.error, "a stale view carries the connection error");
    assert.ok(stale.items.length > 0, "and keeps its data");
    // Nobody else held that view: it closed with the session, and a new life starts on sync.
    const created = await other.mutate<{ id: bigint }>("create_task", { project_id: 2, title: "Fresh start" });
    await proxy.restore();
    const s = await v.until((s) => s.status === "live" && s.items.some((t) => t.id === created.data.id), 20_000);
    assert.equal(v.lastSync?.mode, "snapshot");
    assert.notEqual(s.epoch, epoch);
    await other.mutate("delete_task", { id: created.data.id });
    await v.until((s) => !s.items.some((t) => t.id === created.data.id), 10_000);
    v.close();
  });

  it("views opened while disconnected subscribe once the connection is back", async () => {
    const c = client("dev-alice", proxy.baseUrl, true);
    await c.connect();
    await proxy.cut();
    await new Promise((r) => setTimeout(r, 200));
    const v = c.view<{ name: string }>("projects");
    assert.equal(v.status, "connecting");
    // While the server cannot be reached the view says why.
    const waiting = await v.until((s) => s.error !== undefined, 10_000);
    assert.equal(waiting.status, "connecting");
    assert.equal(waiting.error?.code, Code.UNAVAILABLE);
    await proxy.restore();
    const s = await v.until((s) => s.status === "live", 20_000);
    assert.deepEqual(
      s.items.map((p) => p.name),
      ["Launch", "Operations"],
    );
    v.close();
  });
});
