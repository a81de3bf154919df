// The offline store's local logic, without a server: tables from specs, the
// outbox (merging, sealing, durability across reopening the SQLite file),
// push answers with conflicts, pulled changes under pending writes.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  ChangeBatchSchema,
  ConflictPolicy,
  IntentOp,
  IntentResult_Status,
  PushPolicy,
  PushResponseSchema,
  SyncTableSpecSchema,
} from "../../src/gen/arcana/v1/offline_pb.js";
import { OfflineStore, SqlJsStorage } from "../../src/offline/node.js";
import { LocalState } from "../../src/offline/state.js";
import { MemoryStorage, type OfflineStorage } from "../../src/offline/storage.js";
import { val } from "../../src/values.js";

const dir = mkdtempSync(join(tmpdir(), "arcana-offline-unit-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const notes = create(SyncTableSpecSchema, {
  name: "notes",
  key: ["id"],
  columns: [
    { name: "id", pgType: "bigint", kind: "int", key: true },
    { name: "body", pgType: "text", kind: "string", nullable: false },
    { name: "done", pgType: "boolean", kind: "bool", nullable: true },
  ],
  pushPolicy: PushPolicy.SCOPE,
  conflictPolicy: ConflictPolicy.REJECT,
});

// Nothing listens there: the store must work without reaching it.
const transport = createGrpcTransport({ baseUrl: "http://127.0.0.1:9" });

async function seeded(storage: OfflineStorage): Promise<OfflineStore> {
  await storage.commit({ tables: [notes], meta: new Map([["schema_hash", "h1"]]) });
  return OfflineStore.open({ transport, storage });
}

describe("offline store, locally", () => {
  it("reads its own writes and keeps the outbox, client id and bundle id across reopening the file", async () => {
    const file = join(dir, "a.sqlite");
    let store = await seeded(await SqlJsStorage.open(file));
    const clientId = store.clientId;
    assert.match(clientId, /^[0-9a-f-]{36}$/);
    assert.equal(await store.insert("notes", { id: 1, body: "one" }), "1");
    await store.insert("notes", { id: 2, body: "two" });
    await store.update("notes", "1", { body: "one, edited" });
    await store.delete("notes", "2");
    // Insert then update merge; insert then delete cancel out.
    assert.equal(store.pendingCount(), 1);
    assert.deepEqual(
      store.rows("notes").map((r) => [r.id, r.values.body, r.pending]),
      [["1", "one, edited", true]],
    );
    await assert.rejects(store.insert("notes", { id: 1, body: "again" }), /ALREADY_EXISTS/);
    await assert.rejects(store.update("notes", "9", { body: "x" }), /NOT_FOUND/);
    await assert.rejects(store.insert("notes", { id: 3, body: "x", colour: "red" }), /no column colour/);
    await assert.rejects(store.insert("notes", { id: "x", body: "x" }), /notes.id is int/);
    await store.close();

    store = await OfflineStore.open({ transport, storage: await SqlJsStorage.open(file) });
    assert.equal(store.clientId, clientId);
    assert.equal(store.pendingCount(), 1);
    assert.equal(store.get("notes", "1")?.values.body, "one, edited");
    await store.close();
  });

  it("seals a bundle once and sends the same bundle id after a restart", async () => {
    const file = join(dir, "b.sqlite");
    const storage = await SqlJsStorage.open(file);
    const store = await seeded(storage);
    for (let i = 1; i <= 5; i++) await store.insert("notes", { id: i, body: `n${i}` });
    await store.close();

    const s1 = new LocalState(await (await SqlJsStorage.open(file)).load());
    const sealed = s1.seal({ rows: 3, bytes: 1 << 20 })!;
    assert.equal(sealed.bundleId, 1n);
    assert.deepEqual(sealed.entries.map((e) => e.id), ["1", "2", "3"]);
    const st = await SqlJsStorage.open(file);
    await st.commit(sealed.batch);
    await st.close();

    // After a crash: the sealed bundle is found again as it was.
    const s2 = new LocalState(await (await SqlJsStorage.open(file)).load());
    const again = s2.sealed()!;
    assert.equal(again.bundleId, 1n);
    assert.deepEqual(again.entries.map((e) => e.id), ["1", "2", "3"]);
    // A write to a sealed row goes in a new entry, not into the bundle.
    const w = s2.write("notes", IntentOp.UPDATE, { id: val.int(1), body: val.string("later") }, 0n);
    assert.equal(w.batch.putOutbox![0]!.bundleId, 0n);
    assert.notEqual(w.batch.putOutbox![0]!.seq, again.entries[0]!.seq);
  });

  it("drops a rejected write, reports the server row, and resends the rest of the bundle", async () => {
    const s = new LocalState(await new MemoryStorage().load());
    s.apply({ tables: [notes] });
    s.apply({ putRows: [{ table: "notes", id: "1", scope: "w1", version: 4n, values: { id: val.int(1), body: val.string("old") } }] });
    s.apply(s.write("notes", IntentOp.UPDATE, { id: val.int(1), body: val.string("mine") }, 10n).batch);
    s.apply(s.write("notes", IntentOp.INSERT, { id: val.int(2), body: val.string("new") }, 11n).batch);
    assert.equal(s.outbox[0]!.baseVersion, 4n);
    const sealed = s.seal({ rows: 10, bytes: 1 << 20 })!;
    s.apply(sealed.batch);
    const res = create(PushResponseSchema, {
      applied: false,
      results: [
        {
          status: IntentResult_Status.CONFLICT,
          serverRow: { table: "notes", id: "1", scope: "w1", version: 6n, values: { id: val.int(1), body: val.string("theirs") } },
        },
        { status: IntentResult_Status.UNSPECIFIED },
      ],
    });
    const { batch, conflicts } = s.pushed(sealed.entries, res);
    s.apply(batch);
    assert.equal(conflicts.length, 1);
    assert.equal(conflicts[0]!.kind, "reject");
    assert.equal(conflicts[0]!.serverRow.version, 6n);
    assert.equal(s.visible("notes", "1")!.body!.kind.value, "theirs");
    assert.deepEqual(s.outbox.map((e) => [e.id, e.bundleId]), [["2", 0n]]);
    // The app re-applies its write on the server row: based on version 6.
    s.apply(s.reapply(conflicts[0]!, 12n));
    assert.equal(s.outbox.find((e) => e.id === "1")!.baseVersion, 6n);
    assert.equal(s.visible("notes", "1")!.body!.kind.value, "mine");
  });

  it("rebases a later write of a row on the version its sent write made, even after a pull brought that version", async () => {
    const s = new LocalState(await new MemoryStorage().load());
    s.apply({ tables: [notes] });
    s.apply({ putRows: [{ table: "notes", id: "1", scope: "w1", version: 4n, values: { id: val.int(1), body: val.string("a") } }] });
    s.apply(s.write("notes", IntentOp.UPDATE, { id: val.int(1), body: val.string("b") }, 1n).batch);
    const sealed = s.seal({ rows: 10, bytes: 1 << 20 })!;
    s.apply(sealed.batch);
    s.apply(s.write("notes", IntentOp.UPDATE, { id: val.int(1), body: val.string("c") }, 2n).batch);
    // The pull brings the sent write's own result before its answer is handled.
    s.apply(
      s.pulled(
        create(ChangeBatchSchema, {
          changes: [{ scope: "w1", sequence: 9n, table: "notes", id: "1", op: IntentOp.UPDATE, version: 5n, values: { id: val.int(1), body: val.string("b") } }],
          through: [{ scope: "w1", sequence: 9n }],
        }),
      ),
    );
    s.apply(s.pushed(sealed.entries, create(PushResponseSchema, { applied: true, results: [{ status: IntentResult_Status.APPLIED, version: 5n }] })).batch);
    assert.deepEqual(s.outbox.map((e) => [e.id, e.baseVersion]), [["1", 5n]]);
    assert.equal(s.visible("notes", "1")!.body!.kind.value, "c");
  });

  it("puts one write per row in a bundle", async () => {
    const s = new LocalState(await new MemoryStorage().load());
    s.apply({ tables: [notes] });
    const w = (seq: number, id: number) => ({
      seq,
      table: "notes",
      id: String(id),
      op: IntentOp.UPDATE,
      values: { id: val.int(id), body: val.string(`v${seq}`) },
      baseVersion: 1n,
      clientTimeMs: 0n,
      bundleId: 0n,
    });
    // Two unsent writes of row 1 (as after a refused bundle): the second waits.
    s.apply({ putOutbox: [w(1, 1), w(2, 2), w(3, 1), w(4, 3)] });
    assert.deepEqual(s.seal({ rows: 10, bytes: 1 << 20 })!.entries.map((e) => e.seq), [1, 2]);
  });

  it("keeps pending writes on top of pulled changes", async () => {
    const s = new LocalState(await new MemoryStorage().load());
    s.apply({ tables: [notes] });
    s.apply({ putRows: [{ table: "notes", id: "1", scope: "w1", version: 1n, values: { id: val.int(1), body: val.string("a"), done: val.bool(false) } }] });
    s.apply(s.write("notes", IntentOp.UPDATE, { id: val.int(1), done: val.bool(true) }, 1n).batch);
    s.apply(
      s.pulled(
        create(ChangeBatchSchema, {
          changes: [
            { scope: "w1", sequence: 7n, table: "notes", id: "1", op: IntentOp.UPDATE, version: 2n, values: { id: val.int(1), body: val.string("b"), done: val.bool(false) } },
            { scope: "w1", sequence: 8n, table: "notes", id: "3", op: IntentOp.INSERT, version: 1n, values: { id: val.int(3), body: val.string("c") } },
          ],
          through: [{ scope: "w1", sequence: 8n }],
        }),
      ),
    );
    const one = s.visible("notes", "1")!;
    assert.equal(one.body!.kind.value, "b", "the pulled change");
    assert.equal(one.done!.kind.value, true, "with the pending write on top");
    assert.equal(s.scopes().get("w1"), 8n);
    assert.equal(s.visibleRows("notes").length, 2);
  });

  it("keeps a row moved between two held scopes whichever side of the move is pulled first", async () => {
    const moved = { id: val.int(1), body: val.string("moved") };
    const insert = { scope: "team:1", sequence: 4n, table: "notes", id: "1", op: IntentOp.INSERT, version: 3n, values: moved };
    const leave = { scope: "team:2", sequence: 9n, table: "notes", id: "1", op: IntentOp.DELETE, version: 3n, movedOut: true };
    const realDelete = { scope: "team:1", sequence: 5n, table: "notes", id: "1", op: IntentOp.DELETE, version: 3n };
    type Change = typeof insert | typeof leave | typeof realDelete;
    const cases: [string, string | undefined, Change[][], boolean][] = [
      ["target first, one batch", "team:2", [[insert, leave]], true],
      ["source first, one batch", "team:2", [[leave, insert]], true],
      ["target first, two batches", "team:2", [[insert], [leave]], true],
      ["source first, two batches", "team:2", [[leave], [insert]], true],
      ["only the source", "team:2", [[leave]], false],
      ["only the target", undefined, [[insert]], true],
      ["fresh, both", undefined, [[insert], [leave]], true],
      ["inserted here, not pulled", "", [[leave]], false],
      ["a real delete at the version", "team:1", [[insert], [realDelete]], false],
    ];
    for (const [name, held, batches, want] of cases) {
      const s = new LocalState(await new MemoryStorage().load());
      s.apply({ tables: [notes] });
      if (held !== undefined) {
        s.apply({ putRows: [{ table: "notes", id: "1", scope: held, version: 1n, values: { id: val.int(1), body: val.string("a") } }] });
      }
      for (const changes of batches) s.apply(s.pulled(create(ChangeBatchSchema, { changes })));
      const row = s.visible("notes", "1");
      assert.equal(row !== undefined, want, name);
      if (want) assert.equal(row!.body!.kind.value, "moved", name);
    }
  });
});
