// Offline stores in Node against a real server and PostgreSQL: two devices
// edit one row offline and converge, a crash after a push replays the same
// bundle without applying it twice, and a follow stream delivers a write
// made in psql.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  type Conflict,
  type OfflineStore,
  SqlJsStorage,
  type StorageBatch,
  UpgradeRequiredError,
  openNodeOfflineStore,
  OfflineStore as Store,
} from "../../src/offline/node.js";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { type OfflineServer, eventually, startOfflineServer } from "../support/offline.js";

let server: OfflineServer;
let dir: string;
const open: OfflineStore[] = [];

before(async () => {
  server = await startOfflineServer();
  dir = mkdtempSync(join(tmpdir(), "arcana-offline-node-"));
});

after(async () => {
  for (const s of open) await s.close().catch(() => {});
  await server?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function device(file: string, token: string, extra: Partial<Parameters<typeof openNodeOfflineStore>[0]> = {}) {
  const s = await openNodeOfflineStore({
    baseUrl: server.baseUrl,
    token,
    file: join(dir, file),
    appVersion: "1.2.0",
    backoff: { initialMs: 50, maxMs: 500 },
    ...extra,
  });
  open.push(s);
  return s;
}

const body = (s: OfflineStore, id: string) => s.get("offline_notes", id)?.values.body;

describe("offline stores in Node", () => {
  it("two devices edit one row offline; after reconnecting both hold the same row", async () => {
    const conflicts: Conflict[] = [];
    const a = await device("a.sqlite", "dev-alice");
    const b = await device("b.sqlite", "dev-bob", {
      // Device B keeps its own edit: it writes it again on the server's row.
      onConflict: (c) => {
        conflicts.push(c);
        return "reapply";
      },
    });
    await a.sync();
    await b.sync();
    assert.deepEqual(a.tables().sort(), ["offline_notes", "offline_prefs"]);
    await a.insert("offline_notes", { id: 1, workspace_id: "acme", body: "first" });
    await a.sync();
    await b.sync();
    assert.equal(body(b, "1"), "first");
    const v1 = b.get("offline_notes", "1")!.version;

    await server.pause();
    await a.update("offline_notes", "1", { body: "from A" });
    await b.update("offline_notes", "1", { body: "from B" });
    await b.insert("offline_notes", { id: 2, workspace_id: "acme", body: "B's own note" });
    await assert.rejects(a.sync(), /UNAVAILABLE/);
    assert.equal(a.pendingCount(), 1, "the write waits in the outbox");
    assert.equal(body(a, "1"), "from A", "the device reads its own pending write");
    await server.resume();

    await a.sync();
    await b.sync();
    await a.sync();
    assert.equal(conflicts.length, 1);
    assert.equal(conflicts[0]!.kind, "reject");
    assert.equal(conflicts[0]!.serverRow.values.body?.kind.value, "from A");
    assert.ok(conflicts[0]!.serverRow.version > v1);
    for (const s of [a, b]) {
      assert.equal(s.pendingCount(), 0);
      assert.equal(body(s, "1"), "from B");
      assert.equal(body(s, "2"), "B's own note");
    }
    assert.equal(a.get("offline_notes", "1")!.version, b.get("offline_notes", "1")!.version);
    const db = await server.sql("SELECT body FROM offline_notes WHERE id = 1");
    assert.equal(db.rows[0].body, "from B");
  });

  it("under last-writer-wins the older offline write is superseded and reported", async () => {
    const conflicts: Conflict[] = [];
    const a = await device("lww-a.sqlite", "dev-alice");
    const b = await device("lww-b.sqlite", "dev-bob", { onConflict: (c) => void conflicts.push(c) });
    await server.sql("INSERT INTO offline_prefs (id, workspace_id, value) VALUES (1, 'acme', 'start')");
    await a.sync();
    await b.sync();
    await b.update("offline_prefs", "1", { value: "older, from B" });
    await new Promise((r) => setTimeout(r, 20));
    await a.update("offline_prefs", "1", { value: "newer, from A" });
    await a.sync();
    await b.sync();
    assert.equal(conflicts.length, 1);
    assert.equal(conflicts[0]!.kind, "superseded");
    assert.equal(conflicts[0]!.serverRow.values.value?.kind.value, "newer, from A");
    for (const s of [a, b]) {
      assert.equal(s.pendingCount(), 0);
      assert.equal(s.get("offline_prefs", "1")?.values.value, "newer, from A");
    }
  });

  it("many offline writes go as several bundles of several chunks, within the server's limits", async () => {
    const bundles: { bundleId: bigint; writes: number; applied: boolean }[] = [];
    const d = await device("many.sqlite", "dev-alice", { onBundle: (r) => bundles.push(r) });
    await d.sync();
    for (let i = 0; i < 12; i++) await d.insert("offline_notes", { id: 500 + i, workspace_id: "acme", body: `many ${i}` });
    await d.sync();
    // The server takes at most 5 writes a bundle and 2 a chunk.
    assert.deepEqual(
      bundles.map((b) => [b.writes, b.applied]),
      [
        [5, true],
        [5, true],
        [2, true],
      ],
    );
    assert.deepEqual(
      bundles.map((b) => b.bundleId),
      [1n, 2n, 3n],
    );
    const n = (await server.sql("SELECT count(*)::int AS n FROM offline_notes WHERE id BETWEEN 500 AND 511")).rows[0].n;
    assert.equal(n, 12);
  });

  it("a restart with a pending bundle sends the same bundle id again and the server applies it once", async () => {
    const file = join(dir, "crash.sqlite");
    const results: { bundleId: bigint; replayed: boolean; applied: boolean }[] = [];
    // A storage that fails like a crash right after the server answered a
    // push: the answer is never recorded locally.
    const real = await SqlJsStorage.open(file);
    let crash = true;
    const crashing = {
      load: () => real.load(),
      close: () => real.close(),
      commit: async (b: StorageBatch) => {
        if (crash && b.deleteOutbox?.length) throw new Error("crashed before recording the answer");
        return real.commit(b);
      },
    };
    const transport = createGrpcTransport({ baseUrl: server.baseUrl });
    const first = await Store.open({
      transport,
      storage: crashing,
      token: "dev-alice",
      appVersion: "1.2.0",
      onBundle: (r) => results.push(r),
    });
    await server.sql("INSERT INTO offline_notes (id, workspace_id, body) VALUES (31, 'acme', 'before')");
    await first.sync();
    const before = (await server.sql("SELECT count(*)::int AS n FROM offline_notes")).rows[0].n as number;
    await first.insert("offline_notes", { id: 30, workspace_id: "acme", body: "once" });
    await first.update("offline_notes", "31", { body: "edited once" });
    await assert.rejects(first.sync(), /crashed/);
    await first.close();
    crash = false;
    const watcher = await device("watcher.sqlite", "dev-alice");
    await watcher.sync();
    const v = watcher.get("offline_notes", "31")!.version;

    const second = await device("crash.sqlite", "dev-alice", { onBundle: (r) => results.push(r) });
    assert.equal(second.pendingCount(), 2, "the outbox survived the crash");
    await second.sync();
    assert.equal(results.length, 2);
    assert.equal(results[1]!.bundleId, results[0]!.bundleId, "the same bundle id");
    assert.equal(results[1]!.replayed, true);
    assert.equal(second.pendingCount(), 0);
    const after = (await server.sql("SELECT count(*)::int AS n FROM offline_notes")).rows[0].n as number;
    assert.equal(after, before + 1);
    await watcher.sync();
    assert.equal(watcher.get("offline_notes", "31")!.version, v, "the replay applied nothing more");
    assert.equal(body(second, "30"), "once");
    assert.equal(body(second, "31"), "edited once");
  });

  it("follow delivers writes made in psql and pushes local writes as they are made", async () => {
    const a = await device("live-a.sqlite", "dev-alice");
    const b = await device("live-b.sqlite", "dev-bob");
    a.start();
    b.start();
    await eventually("both stores live", () => a.status === "live" && b.status === "live");
    await server.sql("INSERT INTO offline_notes (id, workspace_id, body) VALUES (41, 'acme', 'seed')");
    await eventually("the psql insert on A", () => body(a, "41") === "seed");
    await server.sql("UPDATE offline_notes SET body = 'from psql' WHERE id = 41");
    await eventually("the psql write on A", () => body(a, "41") === "from psql");
    await eventually("the psql write on B", () => body(b, "41") === "from psql");
    await a.insert("offline_notes", { id: 40, workspace_id: "acme", body: "live from A" });
    await eventually("A's write on B", () => body(b, "40") === "live from A");
    // B can pull the write before A has recorded the server's answer to it.
    await eventually("A's push answered", () => a.pendingCount() === 0);
    await a.stop();
    await b.stop();
  });

  it("the loop goes offline when the server stops, and pushes the writes made meanwhile once it is back", async () => {
    const d = await device("loop.sqlite", "dev-alice", { backoff: { initialMs: 50, maxMs: 300 } });
    const seen: string[] = [];
    d.subscribe(() => {
      if (seen[seen.length - 1] !== d.status) seen.push(d.status);
    });
    d.start();
    await eventually("live", () => d.status === "live");
    await server.pause();
    try {
      await eventually("offline", () => d.status === "offline");
      // The stream ends as the server shuts down; the retries then find nothing listening.
      await eventually("a refused retry", () => d.error?.codeName === "UNAVAILABLE");
      await d.insert("offline_notes", { id: 45, workspace_id: "acme", body: "written during the outage" });
    } finally {
      await server.resume();
    }
    await eventually("the write pushed", () => d.pendingCount() === 0, 30_000);
    assert.equal(d.status, "live");
    const r = await server.sql("SELECT body FROM offline_notes WHERE id = 45");
    assert.equal(r.rows[0]?.body, "written during the outage");
    assert.ok(seen.includes("offline") && seen.lastIndexOf("live") > seen.indexOf("offline"), seen.join(" "));
    await d.stop();
  });

  it("a device behind the pruned history takes a snapshot of its scope", async () => {
    const snaps: string[][] = [];
    const d = await device("behind.sqlite", "dev-alice", { onSnapshot: (sc) => snaps.push(sc) });
    await server.sql("INSERT INTO offline_notes (id, workspace_id, body) VALUES (70, 'acme', 'stays'), (71, 'acme', 'goes')");
    await d.sync();
    assert.deepEqual(snaps, [[]], "a new device starts from a snapshot of everything");
    assert.equal(body(d, "71"), "goes");
    // More changes than the server keeps, while the device is away.
    await server.sql("DELETE FROM offline_notes WHERE id = 71");
    for (let i = 0; i < 8; i++) await server.sql(`UPDATE offline_notes SET body = 'stays ${i}' WHERE id = 70`);
    await new Promise((r) => setTimeout(r, 1500)); // retention runs every 200 ms
    await d.sync();
    assert.deepEqual(snaps, [[], ["workspace:acme"]]);
    assert.equal(body(d, "70"), "stays 7");
    assert.equal(body(d, "71"), undefined, "a row deleted while away is gone");
  });

  it("a snapshot broken after its first chunk resumes from that chunk's cursor", async () => {
    for (let i = 80; i < 87; i++) {
      await server.sql("INSERT INTO offline_notes (id, workspace_id, body) VALUES ($1, 'acme', $2)", [i, `row ${i}`]);
    }
    // Every Snapshot call: the cursor it sent, the chunks it got, how it ended.
    type Call = { cursor: string; chunks: { cursor: string; last: boolean; rows: string[] }[]; error?: ConnectError };
    type Chunk = { cursor: string; last: boolean; rows: { table: string; id: string }[] };
    const calls: Call[] = [];
    // Breaks the first Snapshot stream after one chunk, as a dropped
    // connection would.
    const breaker: Interceptor = (next) => async (req) => {
      if (req.method.name !== "Snapshot" || !req.stream) return next(req);
      const call: Call = { cursor: "", chunks: [] };
      const first = calls.push(call) === 1;
      const sent = req.message as AsyncIterable<{ cursor: string }>;
      let res;
      try {
        res = await next({
          ...req,
          message: (async function* () {
            for await (const m of sent) {
              call.cursor = m.cursor;
              yield m;
            }
          })(),
        } as typeof req);
      } catch (e) {
        call.error = ConnectError.from(e);
        throw e;
      }
      if (!res.stream) return res;
      const inner = res.message as AsyncIterable<Chunk>;
      return {
        ...res,
        message: (async function* () {
          try {
            for await (const m of inner) {
              call.chunks.push({ cursor: m.cursor, last: m.last, rows: m.rows.map((r) => `${r.table}/${r.id}`) });
              yield m;
              if (first) throw new ConnectError("connection dropped", Code.Unavailable);
            }
          } catch (e) {
            call.error = ConnectError.from(e);
            throw e;
          }
        })(),
      } as typeof res;
    };
    const d = await Store.open({
      transport: createGrpcTransport({ baseUrl: server.baseUrl, interceptors: [breaker] }),
      storage: await SqlJsStorage.open(join(dir, "resume.sqlite")),
      token: "dev-alice",
      appVersion: "1.2.0",
      backoff: { initialMs: 10, maxMs: 50 },
    });
    open.push(d);
    await d.sync();
    const [broken, ...later] = calls;
    const done = later.pop();
    assert.ok(broken && done, `a broken call and a resumed one, got ${calls.length} calls`);
    assert.equal(broken.cursor, "");
    assert.equal(broken.chunks.length, 1);
    assert.equal(broken.error?.rawMessage, "connection dropped");
    const from = broken.chunks[0]!.cursor;
    assert.notEqual(from, "");
    // The server frees the broken stream's place (one open snapshot per
    // client) only once it has noticed the stream is gone; a resume that
    // arrives before that is refused, and retried with the same cursor.
    for (const r of later) {
      assert.equal(r.cursor, from, "a refused resume keeps the cursor");
      assert.equal(r.error?.code, Code.ResourceExhausted, String(r.error));
      assert.match(r.error.rawMessage, /max_snapshots_per_client/);
      assert.equal(r.chunks.length, 0);
    }
    assert.equal(done.cursor, from, "resumed from the first chunk's cursor");
    assert.equal(done.error, undefined);
    assert.equal(done.chunks.at(-1)?.last, true);
    const resent = done.chunks.flatMap((c) => c.rows).filter((r) => broken.chunks[0]!.rows.includes(r));
    assert.deepEqual(resent, [], "the rows of the first chunk are not sent again");
    const want = (await server.sql("SELECT id::text, body FROM offline_notes WHERE workspace_id = 'acme' ORDER BY offline_notes.id")).rows;
    const got = d
      .rows("offline_notes")
      .map((r) => ({ id: r.id, body: r.values.body }))
      .sort((a, b) => Number(a.id) - Number(b.id));
    assert.deepEqual(got, want);
  });

  it("a bundle the server refuses as invalid is dropped and reported, and later writes still go", async () => {
    const refused: { ids: string[]; code: number }[] = [];
    const d = await device("refused.sqlite", "dev-alice", {
      onRefused: (r) => refused.push({ ids: r.writes.map((w) => w.id), code: r.error.code }),
    });
    await d.sync();
    // Local checks pass (the spec says the column is NOT NULL, but the server
    // fills some columns in); PostgreSQL refuses the null.
    await d.insert("offline_notes", { id: 90, workspace_id: "acme", body: null });
    await d.sync();
    assert.deepEqual(refused, [{ ids: ["90"], code: 3 }]);
    assert.equal(d.pendingCount(), 0);
    assert.equal(d.get("offline_notes", "90"), undefined);
    await d.insert("offline_notes", { id: 91, workspace_id: "acme", body: "fine" });
    await d.sync();
    assert.equal((await server.sql("SELECT body FROM offline_notes WHERE id = 91")).rows[0]?.body, "fine");
  });

  it("keeps other workspaces' rows away and refuses an old app version with a typed error", async () => {
    const c = await device("carol.sqlite", "dev-carol");
    await c.sync();
    assert.equal(c.rows("offline_notes").length, 0);
    const old = await device("old.sqlite", "dev-alice", { appVersion: "0.9.0" });
    const err = await old.sync().then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(err instanceof UpgradeRequiredError, String(err));
    assert.match(err.message, /upgrade/i);
    old.start();
    await eventually("the loop to stop as failed", () => old.status === "failed");
    assert.ok(old.error instanceof UpgradeRequiredError);
  });
});
