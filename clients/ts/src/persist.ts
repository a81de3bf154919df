// Persist stores: the normalized rows and each view's position (epoch,
// version, refs), so a page can show its views at once on the next load and
// catch up with Sync instead of a snapshot.
import type { Fields } from "./cache.js";
import type { Ref } from "./gen/arcana/v1/value_pb.js";

/** One view as persisted: enough to show it and to Sync from where it was. */
export interface PersistedView {
  /** The client's key for the view (graph and params). */
  key: string;
  graph: string;
  /** The server's view id. */
  id: string;
  epoch: bigint;
  version: bigint;
  total: bigint | undefined;
  refs: Ref[];
  /** Windowed views: whether rows exist before and after the window. */
  edges?: { hasBefore: boolean; hasAfter: boolean };
  /** When it was saved (ms since the epoch); the oldest go first past the limit. */
  savedAt: number;
}

/** What a store holds. */
export interface PersistedState {
  views: PersistedView[];
  /** Rows by cache key (see `rowKey`). */
  rows: [string, Fields][];
}

/** A change to write in one go. */
export interface PersistWrite {
  views: PersistedView[];
  deleteViews: string[];
  rows: [string, Fields][];
  deleteRows: string[];
}

/**
 * Where a client keeps its views between page loads. Values are stored as
 * they are (bigint, Date, Uint8Array included), so a store must keep them
 * structurally (IndexedDB and `structuredClone` do).
 */
export interface PersistStore {
  load(): Promise<PersistedState>;
  write(w: PersistWrite): Promise<void>;
  /** Forgets everything (say, on sign-out). */
  clear(): Promise<void>;
}

/** A store in memory: for tests, SSR, and sharing state between clients of one process. */
export class MemoryStore implements PersistStore {
  private readonly views = new Map<string, PersistedView>();
  private readonly rows = new Map<string, Fields>();

  async load(): Promise<PersistedState> {
    return structuredClone({ views: [...this.views.values()], rows: [...this.rows.entries()] });
  }

  async write(w: PersistWrite): Promise<void> {
    const c = structuredClone(w);
    for (const k of c.deleteViews) this.views.delete(k);
    for (const k of c.deleteRows) this.rows.delete(k);
    for (const v of c.views) this.views.set(v.key, v);
    for (const [k, f] of c.rows) this.rows.set(k, f);
  }

  async clear(): Promise<void> {
    this.views.clear();
    this.rows.clear();
  }
}

const VIEWS = "views";
const ROWS = "rows";

function done(req: IDBRequest | IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    if ("oncomplete" in req) {
      req.oncomplete = () => resolve();
      req.onabort = req.onerror = () => reject(req.error);
    } else {
      req.onsuccess = () => resolve();
      req.onerror = () => reject(req.error);
    }
  });
}

/** A store in the browser's IndexedDB: database `name` (default "arcana"), one per user is wise. */
export class IndexedDbStore implements PersistStore {
  private db: Promise<IDBDatabase> | undefined;

  constructor(private readonly name = "arcana") {}

  private open(): Promise<IDBDatabase> {
    if (!this.db) {
      this.db = new Promise((resolve, reject) => {
        const req = indexedDB.open(this.name, 1);
        req.onupgradeneeded = () => {
          req.result.createObjectStore(VIEWS, { keyPath: "key" });
          req.result.createObjectStore(ROWS);
        };
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error);
      });
    }
    return this.db;
  }

  async load(): Promise<PersistedState> {
    const db = await this.open();
    const tx = db.transaction([VIEWS, ROWS], "readonly");
    const views = tx.objectStore(VIEWS).getAll();
    const keys = tx.objectStore(ROWS).getAllKeys();
    const rows = tx.objectStore(ROWS).getAll();
    await done(tx);
    const k = keys.result as string[];
    return {
      views: views.result as PersistedView[],
      rows: (rows.result as Fields[]).map((f, i) => [k[i]!, f]),
    };
  }

  async write(w: PersistWrite): Promise<void> {
    const db = await this.open();
    const tx = db.transaction([VIEWS, ROWS], "readwrite");
    const views = tx.objectStore(VIEWS);
    const rows = tx.objectStore(ROWS);
    for (const k of w.deleteViews) views.delete(k);
    for (const k of w.deleteRows) rows.delete(k);
    for (const v of w.views) views.put(v);
    for (const [k, f] of w.rows) rows.put(f, k);
    await done(tx);
  }

  async clear(): Promise<void> {
    const db = await this.open();
    const tx = db.transaction([VIEWS, ROWS], "readwrite");
    tx.objectStore(VIEWS).clear();
    tx.objectStore(ROWS).clear();
    await done(tx);
  }
}
