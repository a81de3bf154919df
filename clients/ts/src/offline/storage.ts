// The storage a device's offline copy lives in. Backends (SQLite through
// sql.js in Node, IndexedDB in browsers, memory in tests) only load
// everything at open and apply atomic batches; the sync logic is shared.
import type { IntentOp, SyncTableSpec } from "../gen/arcana/v1/offline_pb.js";
import type { Value } from "../gen/arcana/v1/value_pb.js";

/** One row as the server last sent it. */
export interface StoredRow {
  table: string;
  /** The row id on the wire (see `rowId`). */
  id: string;
  scope: string;
  version: bigint;
  values: Record<string, Value>;
}

/** One local write waiting to reach the server. */
export interface OutboxEntry {
  /** Local order of the write, increasing. */
  seq: number;
  table: string;
  id: string;
  op: IntentOp;
  /** Key values (all ops) and written values (insert, update). */
  values: Record<string, Value>;
  /** The row version the device saw when the write was made (0: new row). */
  baseVersion: bigint;
  clientTimeMs: bigint;
  /** The bundle this write was sealed into, 0 while it is not sealed yet. */
  bundleId: bigint;
}

/** Everything a store keeps, as loaded at open. */
export interface StoredState {
  meta: Map<string, string>;
  tables: SyncTableSpec[];
  rows: StoredRow[];
  outbox: OutboxEntry[];
}

/** Changes applied all together or not at all. */
export interface StorageBatch {
  /** Replace the table specs (and the local tables they describe). */
  tables?: SyncTableSpec[];
  /** Drop every stored row first. */
  clearRows?: boolean;
  /** Drop the rows of these scopes first (a snapshot replaces them). */
  clearScopes?: string[];
  putRows?: StoredRow[];
  deleteRows?: { table: string; id: string }[];
  putOutbox?: OutboxEntry[];
  deleteOutbox?: number[];
  meta?: Map<string, string>;
}

/** Where an offline store keeps its rows, outbox and positions. */
export interface OfflineStorage {
  load(): Promise<StoredState>;
  /** Applies a batch atomically and durably before resolving. */
  commit(batch: StorageBatch): Promise<void>;
  close(): Promise<void>;
}

/** True when a batch changes nothing. */
export function emptyBatch(b: StorageBatch): boolean {
  return (
    b.tables === undefined &&
    !b.clearRows &&
    !b.clearScopes?.length &&
    !b.putRows?.length &&
    !b.deleteRows?.length &&
    !b.putOutbox?.length &&
    !b.deleteOutbox?.length &&
    !b.meta?.size
  );
}

/**
 * Applies a batch to a loaded state, in the order every backend follows:
 * tables, clears, row deletes, row puts, outbox deletes, outbox puts, meta.
 */
export function applyBatch(s: StoredState, b: StorageBatch): void {
  if (b.tables) {
    s.tables = b.tables;
    const names = new Set(b.tables.map((t) => t.name));
    s.rows = s.rows.filter((r) => names.has(r.table));
  }
  if (b.clearRows) s.rows = [];
  if (b.clearScopes?.length) {
    const drop = new Set(b.clearScopes);
    s.rows = s.rows.filter((r) => !drop.has(r.scope));
  }
  const key = (t: string, id: string) => `${t}\u0000${id}`;
  if (b.deleteRows?.length || b.putRows?.length) {
    const byKey = new Map(s.rows.map((r) => [key(r.table, r.id), r]));
    for (const d of b.deleteRows ?? []) byKey.delete(key(d.table, d.id));
    for (const r of b.putRows ?? []) byKey.set(key(r.table, r.id), r);
    s.rows = [...byKey.values()];
  }
  if (b.deleteOutbox?.length || b.putOutbox?.length) {
    const bySeq = new Map(s.outbox.map((e) => [e.seq, e]));
    for (const q of b.deleteOutbox ?? []) bySeq.delete(q);
    for (const e of b.putOutbox ?? []) bySeq.set(e.seq, e);
    s.outbox = [...bySeq.values()].sort((a, b) => a.seq - b.seq);
  }
  for (const [k, v] of b.meta ?? []) s.meta.set(k, v);
}

/** Keeps everything in memory: for tests and for pages that need no persistence. */
export class MemoryStorage implements OfflineStorage {
  private state: StoredState = { meta: new Map(), tables: [], rows: [], outbox: [] };

  async load(): Promise<StoredState> {
    const s = this.state;
    return { meta: new Map(s.meta), tables: [...s.tables], rows: [...s.rows], outbox: [...s.outbox] };
  }

  async commit(batch: StorageBatch): Promise<void> {
    applyBatch(this.state, batch);
  }

  async close(): Promise<void> {}
}
