// The OpenSession + unary strategy (what browsers use), from Node over grpc-web.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { createGrpcWebTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { ArcanaClient, Code, type Item, type TokenSource } from "../../src/index.js";
import { type DemoServer, startDemo } from "../support/server.js";
import { startProxy } from "../support/proxy.js";

interface Task {
  id: bigint;
  title: string;
  points: bigint | null;
}

let server: DemoServer;
const clients: ArcanaClient[] = [];

function client(token: TokenSource, baseUrl = server.baseUrl): ArcanaClient {
  const transport = createGrpcWebTransport({ baseUrl, httpVersion: "1.1" });
  const c = new ArcanaClient({ transport, session: "stream", token, backoff: { initialMs: 50, maxMs: 400 } });
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

describe("stream sessions over grpc-web", () => {
  it("subscribes, applies diffs of unary mutations, and resyncs after a drop", async () => {
    // Every call awaits the token: while `gate` is pending the session cannot
    // reopen, so the write to catch up on is made while it is away.
    let gate = Promise.resolve();
    const c = client(() => gate.then(() => "dev-alice"));
    const v = c.view<Task>("project_tasks", { project_id: 1 });
    const a = c.view<Task>("project_tasks", { project_id: 2 });
    const [s] = await Promise.all([v.ready(), a.ready()]);
    assert.ok(s.items.length >= 4);
    assert.match(c.sessionInfo!.sessionId, /\S/);

    const r = await c.mutate<{ id: bigint }>("create_task", { project_id: 1, title: "Over grpc-web" });
    // A unary mutation does not wait for the session's frames.
    await v.until((s) => s.items.some((t) => t.id === r.data.id), 10_000);
    assert.equal(v.total, s.total! + 1n);

    // Drop the session, write meanwhile from elsewhere, and watch it come back.
    const watcher = client("dev-alice").view<Task>("project_tasks", { project_id: 1 });
    await watcher.ready();
    let open!: () => void;
    gate = new Promise<void>((r) => (open = r));
    c.dropSession();
    assert.equal(v.status, "stale");
    await client("dev-alice").mutate("update_task", { id: r.data.id, title: "Renamed while away" });
    await watcher.until((s) => s.items.some((t) => t.title === "Renamed while away"), 10_000);
    open();
    const back = await v.until((s) => s.status === "live" && s.items.some((t) => t.title === "Renamed while away"), 20_000);
    assert.equal(v.lastSync?.mode, "catch_up");
    assert.equal(back.version, watcher.version);

    await c.mutate("delete_task", { id: r.data.id });
    await v.until((s) => !s.items.some((t) => t.id === r.data.id), 10_000);
    v.close();
    a.close();
  });

  it("applies a catch-up batch that arrives on the session stream", async () => {
    const proxy = await startProxy(server.port);
    // The writes go straight to Postgres, so each reaches the views once, as
    // its WAL record. A mutation's write reaches them twice: re-evaluated at
    // once, then patched in from its WAL record, which when late rolls the
    // title back and forth in versions of its own, after the watcher saw the
    // last write.
    const db = new pg.Client({ connectionString: server.pgUrl });
    await db.connect();
    try {
      const c = client("dev-alice", proxy.baseUrl);
      const other = client("dev-alice");
      const v = c.view<Task>("project_tasks", { project_id: 2 });
      const watcher = other.view<Task>("project_tasks", { project_id: 2 });
      await Promise.all([v.ready(), watcher.ready()]);
      const created = await db.query<{ id: string }>(
        "INSERT INTO tasks (workspace_id, project_id, title, position) VALUES ('acme', 2, 'Streamed 0', 100) RETURNING id",
      );
      const id = BigInt(created.rows[0]!.id);
      const before = await v.until((s) => s.items.some((t) => t.id === id), 10_000);
      const received = c.received;
      const versions: bigint[] = [];
      const off = v.subscribe((s) => versions.push(s.version));

      await proxy.cut();
      await v.until((s) => s.status === "stale", 10_000);
      for (let i = 1; i <= 3; i++) {
        await db.query("UPDATE tasks SET title = $1 WHERE id = $2", [`Streamed ${i}`, id]);
        // One version per write: the next is made once this one shows.
        await watcher.until((s) => s.items.find((t) => t.id === id)?.title === `Streamed ${i}`, 10_000);
      }
      assert.equal(watcher.version - before.version, 3n);

      await proxy.restore();
      const s = await v.until((s) => s.status === "live" && s.version === watcher.version, 20_000);
      off();
      assert.equal(v.lastSync?.mode, "catch_up");
      assert.equal(v.lastSync?.frames, 3);
      assert.equal(c.received.batches - received.batches, 1, "the catch-up diffs arrived as one batch");
      assert.deepEqual([...new Set(versions)], [before.version, watcher.version]);
      assert.equal(s.items.find((t) => t.id === id)!.title, "Streamed 3");
      const fresh = client("dev-alice").view<Task>("project_tasks", { project_id: 2 });
      assert.deepEqual(s.items, (await fresh.ready()).items);
      fresh.close();

      await other.mutate("delete_task", { id });
      await v.until((s) => !s.items.some((t) => t.id === id), 10_000);
      v.close();
      watcher.close();
    } finally {
      await db.end();
      await proxy.close();
    }
  });

  it("keeps int64 exact and reports error codes", async () => {
    const carol = client("dev-carol");
    const v = carol.view<Task>("project_tasks", { project_id: 3 });
    const s = await v.ready();
    assert.equal(s.items[0]!.points, 9007199254740993n);
    await assert.rejects(carol.view("no_such_graph").ready(), { code: Code.NOT_FOUND });
    await assert.rejects(carol.view("project_tasks", { project_id: "three" }).ready(), { code: Code.INVALID_ARGUMENT });
    await assert.rejects(client(undefined).view("projects").ready(), { code: Code.UNAUTHENTICATED });
    const d = await carol.describe();
    assert.deepEqual(
      d.graphs.map((g) => g.name).sort(),
      ["my_tasks", "project_tasks", "projects", "task_window"],
    );
    v.close();
  });
});
