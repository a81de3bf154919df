// IndexedDB storage for browsers: one database per store name, a commit is
// one readwrite transaction over all its object stores.
import { decodeIntent, decodeTables, decodeValues, encodeIntent, encodeTables, encodeValues } from "./codec.js";
import type { OfflineStorage, StorageBatch, StoredState } from "./storage.js";

const STORES = ["meta", "specs", "rows", "outbox"] as const;

interface RowRecord {
  table: string;
  id: string;
  scope: string;
  version: string;
  row: Uint8Array;
}

interface OutboxRecord {
  seq: number;
  id: string;
  bundle: string;
  intent: Uint8Array;
}

function req<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((res, rej) => {
    r.onsuccess = () => res(r.result);
    r.onerror = () => rej(r.error);
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((res, rej) => {
    tx.oncomplete = () => res();
    tx.onerror = () => rej(tx.error);
    tx.onabort = () => rej(tx.error ?? new Error("IndexedDB transaction aborted"));
  });
}

export class IndexedDbOfflineStorage implements OfflineStorage {
  private constructor(private readonly db: IDBDatabase) {}

  /** Opens (or creates) the database named `name`. */
  static async open(name = "arcana-offline", factory: IDBFactory = globalThis.indexedDB): Promise<IndexedDbOfflineStorage> {
    const r = factory.open(name, 1);
    r.onupgradeneeded = () => {
      const db = r.result;
      db.createObjectStore("meta");
      db.createObjectStore("specs");
      const rows = db.createObjectStore("rows", { keyPath: ["table", "id"] });
      rows.createIndex("scope", "scope");
      db.createObjectStore("outbox", { keyPath: "seq" });
    };
    return new IndexedDbOfflineStorage(await req(r));
  }

  async load(): Promise<StoredState> {
    const tx = this.db.transaction([...STORES], "readonly");
    const [metaKeys, metaValues, spec, rows, outbox] = await Promise.all([
      req(tx.objectStore("meta").getAllKeys()),
      req(tx.objectStore("meta").getAll()),
      req(tx.objectStore("specs").get(1) as IDBRequest<Uint8Array | undefined>),
      req(tx.objectStore("rows").getAll() as IDBRequest<RowRecord[]>),
      req(tx.objectStore("outbox").getAll() as IDBRequest<OutboxRecord[]>),
    ]);
    const meta = new Map<string, string>();
    metaKeys.forEach((k, i) => meta.set(String(k), metaValues[i] as string));
    return {
      meta,
      tables: spec ? decodeTables(spec) : [],
      rows: rows.map((r) => ({
        table: r.table,
        id: r.id,
        scope: r.scope,
        version: BigInt(r.version),
        values: decodeValues(r.row),
      })),
      outbox: outbox.map((o) => decodeIntent(o.seq, o.id, BigInt(o.bundle), o.intent)),
    };
  }

  async commit(b: StorageBatch): Promise<void> {
    const tx = this.db.transaction([...STORES], "readwrite");
    const finished = done(tx);
    const rows = tx.objectStore("rows");
    if (b.tables) {
      tx.objectStore("specs").put(encodeTables(b.tables), 1);
      const names = new Set(b.tables.map((t) => t.name));
      await this.each(rows.openCursor(), (c) => {
        if (!names.has((c.value as RowRecord).table)) c.delete();
      });
    }
    if (b.clearRows) rows.clear();
    for (const s of b.clearScopes ?? []) {
      await this.each(rows.index("scope").openCursor(IDBKeyRange.only(s)), (c) => {
        c.delete();
      });
    }
    for (const d of b.deleteRows ?? []) rows.delete([d.table, d.id]);
    for (const r of b.putRows ?? []) {
      const rec: RowRecord = { table: r.table, id: r.id, scope: r.scope, version: r.version.toString(), row: encodeValues(r.values) };
      rows.put(rec);
    }
    const outbox = tx.objectStore("outbox");
    for (const q of b.deleteOutbox ?? []) outbox.delete(q);
    for (const e of b.putOutbox ?? []) {
      const rec: OutboxRecord = { seq: e.seq, id: e.id, bundle: e.bundleId.toString(), intent: encodeIntent(e) };
      outbox.put(rec);
    }
    const meta = tx.objectStore("meta");
    for (const [k, v] of b.meta ?? []) meta.put(v, k);
    await finished;
  }

  async close(): Promise<void> {
    this.db.close();
  }

  /** Visits every record of a cursor request (the transaction stays open while it runs). */
  private each(r: IDBRequest<IDBCursorWithValue | null>, fn: (c: IDBCursorWithValue) => void): Promise<void> {
    return new Promise((res, rej) => {
      r.onsuccess = () => {
        const c = r.result;
        if (!c) return res();
        fn(c);
        c.continue();
      };
      r.onerror = () => rej(r.error);
    });
  }
}
