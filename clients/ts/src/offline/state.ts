// The device's copy in memory: server rows, the outbox of local writes, and
// the positions. Every change is computed here as a StorageBatch, committed
// to storage, and only then applied here, so memory never runs ahead of disk.
import { create, toBinary } from "@bufbuild/protobuf";
import {
  type ChangeBatch,
  IntentOp,
  IntentResult_Status,
  type PushResponse,
  PushPolicy,
  RowIntentSchema,
  type ServerRow,
  type SyncTableSpec,
} from "../gen/arcana/v1/offline_pb.js";
import type { Value } from "../gen/arcana/v1/value_pb.js";
import { ArcanaError, Code } from "../errors.js";
import { valueText } from "../values.js";
import { type OutboxEntry, type StorageBatch, type StoredRow, type StoredState, applyBatch } from "./storage.js";

/** Meta keys. */
export const META = {
  clientId: "client_id",
  bundleId: "last_bundle_id",
  scopes: "scopes",
  schemaHash: "schema_hash",
} as const;

/** A local write refused or overruled by the server. */
export interface Conflict {
  table: string;
  id: string;
  /** "reject": the server refused the write; "superseded": a later or server write won. */
  kind: "reject" | "superseded";
  /** The local write. */
  op: "insert" | "update" | "delete";
  values: Record<string, Value>;
  /** The server's row as it stands. */
  serverRow: { values: Record<string, Value>; version: bigint; deleted: boolean; scope: string };
}

/** What to do with a rejected write: drop it (default), or write it again on top of the server's row. */
export type Resolution = "drop" | "reapply";

export function opName(op: IntentOp): Conflict["op"] {
  return op === IntentOp.INSERT ? "insert" : op === IntentOp.DELETE ? "delete" : "update";
}

const rkey = (table: string, id: string) => `${table}\u0000${id}`;

/** A row's id from its key values: the value's text, or a JSON array of texts for composite keys. */
export function rowId(spec: SyncTableSpec, values: Record<string, Value>): string {
  const missing = spec.key.filter((c) => values[c] === undefined || values[c]?.kind.case === "null");
  if (missing.length) {
    throw new ArcanaError(Code.INVALID_ARGUMENT, `${spec.name}: the key column ${missing.join(", ")} needs a value`);
  }
  const texts = spec.key.map((c) => valueText(values[c]));
  return texts.length === 1 ? texts[0]! : JSON.stringify(texts);
}

/** Positions per scope, stored as JSON of decimal strings. */
export function parseScopes(text: string | undefined): Map<string, bigint> {
  const out = new Map<string, bigint>();
  if (!text) return out;
  for (const [k, v] of Object.entries(JSON.parse(text) as Record<string, string>)) out.set(k, BigInt(v));
  return out;
}

export function formatScopes(m: Map<string, bigint>): string {
  return JSON.stringify(Object.fromEntries([...m].map(([k, v]) => [k, v.toString()])));
}

/** Limits a bundle is cut to. */
export interface BundleLimits {
  rows: number;
  bytes: number;
}

export class LocalState {
  specs = new Map<string, SyncTableSpec>();
  rows = new Map<string, StoredRow>();
  outbox: OutboxEntry[] = [];
  meta = new Map<string, string>();

  constructor(s: StoredState) {
    this.load(s);
  }

  private load(s: StoredState): void {
    this.specs = new Map(s.tables.map((t) => [t.name, t]));
    this.rows = new Map(s.rows.map((r) => [rkey(r.table, r.id), r]));
    this.outbox = [...s.outbox].sort((a, b) => a.seq - b.seq);
    this.meta = new Map(s.meta);
  }

  /** Applies a committed batch. */
  apply(b: StorageBatch): void {
    const s: StoredState = {
      meta: this.meta,
      tables: [...this.specs.values()],
      rows: [...this.rows.values()],
      outbox: this.outbox,
    };
    applyBatch(s, b);
    this.load(s);
  }

  scopes(): Map<string, bigint> {
    return parseScopes(this.meta.get(META.scopes));
  }

  spec(table: string): SyncTableSpec {
    const s = this.specs.get(table);
    if (!s) throw new ArcanaError(Code.NOT_FOUND, `no synced table named ${JSON.stringify(table)}`);
    return s;
  }

  serverRow(table: string, id: string): StoredRow | undefined {
    return this.rows.get(rkey(table, id));
  }

  /** The row as the app sees it: the server's row with the pending writes on top. */
  visible(table: string, id: string): Record<string, Value> | undefined {
    const base = this.serverRow(table, id);
    let values = base ? { ...base.values } : undefined;
    for (const e of this.outbox) {
      if (e.table !== table || e.id !== id) continue;
      values = overlay(values, e);
    }
    return values;
  }

  /** Every visible row of a table, server rows first, then local inserts. */
  visibleRows(table: string): { id: string; values: Record<string, Value>; version: bigint; scope: string; pending: boolean }[] {
    const pendingIds = new Set(this.outbox.filter((e) => e.table === table).map((e) => e.id));
    const out = [];
    const seen = new Set<string>();
    for (const r of this.rows.values()) {
      if (r.table !== table) continue;
      seen.add(r.id);
      const values = pendingIds.has(r.id) ? this.visible(table, r.id) : r.values;
      if (values) out.push({ id: r.id, values, version: r.version, scope: r.scope, pending: pendingIds.has(r.id) });
    }
    for (const id of pendingIds) {
      if (seen.has(id)) continue;
      const values = this.visible(table, id);
      if (values) out.push({ id, values, version: 0n, scope: "", pending: true });
      seen.add(id);
    }
    return out;
  }

  /** The batch recording one local write, merged into an unsent write of the same row when there is one. */
  write(table: string, op: IntentOp, values: Record<string, Value>, nowMs: bigint): { batch: StorageBatch; id: string } {
    const spec = this.spec(table);
    if (spec.pushPolicy === PushPolicy.READ_ONLY) {
      throw new ArcanaError(Code.PERMISSION_DENIED, `${table} is read-only on devices`);
    }
    const known = new Set(spec.columns.map((c) => c.name));
    const unknown = Object.keys(values).filter((c) => !known.has(c));
    if (unknown.length) {
      throw new ArcanaError(Code.INVALID_ARGUMENT, `${table} has no column ${unknown.join(", ")}`);
    }
    const id = rowId(spec, values);
    const current = this.visible(table, id);
    if (op === IntentOp.INSERT && current) {
      throw new ArcanaError(Code.ALREADY_EXISTS, `${table} ${id} already exists`);
    }
    if (op !== IntentOp.INSERT && !current) {
      throw new ArcanaError(Code.NOT_FOUND, `${table} ${id} does not exist`);
    }
    // Columns left out of an insert are not checked here: the server fills
    // in the scope and owner columns, and the spec does not say which.
    const keyOnly = Object.fromEntries(spec.key.map((k) => [k, values[k]!]));
    const vals = op === IntentOp.DELETE ? keyOnly : values;
    const mine = this.outbox.filter((e) => e.table === table && e.id === id);
    const last = mine[mine.length - 1];
    const batch: StorageBatch = {};
    if (last && last.bundleId === 0n) {
      const merged = merge(last, op, vals, keyOnly);
      if (merged === undefined) {
        batch.deleteOutbox = [last.seq];
      } else {
        batch.putOutbox = [{ ...last, ...merged, clientTimeMs: nowMs }];
      }
      return { batch, id };
    }
    const seq = (this.outbox[this.outbox.length - 1]?.seq ?? 0) + 1;
    batch.putOutbox = [
      {
        seq,
        table,
        id,
        op,
        values: vals,
        baseVersion: this.serverRow(table, id)?.version ?? 0n,
        clientTimeMs: nowMs,
        bundleId: 0n,
      },
    ];
    return { batch, id };
  }

  /** The bundle in flight: the oldest sealed writes, if any. */
  sealed(): { bundleId: bigint; entries: OutboxEntry[] } | undefined {
    const first = this.outbox.find((e) => e.bundleId !== 0n);
    if (!first) return undefined;
    return { bundleId: first.bundleId, entries: this.outbox.filter((e) => e.bundleId === first.bundleId) };
  }

  /** The batch sealing the oldest unsent writes into the next bundle, within the limits. */
  seal(limits: BundleLimits): { batch: StorageBatch; bundleId: bigint; entries: OutboxEntry[] } | undefined {
    const open = this.outbox.filter((e) => e.bundleId === 0n);
    if (!open.length) return undefined;
    const bundleId = BigInt(this.meta.get(META.bundleId) ?? "0") + 1n;
    const entries: OutboxEntry[] = [];
    const rowsIn = new Set<string>();
    let bytes = 0;
    for (const e of open) {
      const size = intentSize(e);
      if (entries.length && (entries.length >= limits.rows || bytes + size > limits.bytes)) break;
      // A second write of a row needs the version the first one makes: it
      // goes in the next bundle, rebased once this one is answered.
      if (rowsIn.has(rkey(e.table, e.id))) break;
      rowsIn.add(rkey(e.table, e.id));
      entries.push({ ...e, bundleId });
      bytes += size;
    }
    return {
      batch: { putOutbox: entries, meta: new Map([[META.bundleId, bundleId.toString()]]) },
      bundleId,
      entries,
    };
  }

  /** The batch for a bundle's answer, and the conflicts to report. */
  pushed(entries: OutboxEntry[], res: PushResponse): { batch: StorageBatch; conflicts: Conflict[] } {
    const batch: StorageBatch = { putRows: [], deleteRows: [], putOutbox: [], deleteOutbox: [] };
    const conflicts: Conflict[] = [];
    const newVersion = new Map<string, { from: bigint; to: bigint }>();
    const take = (sr: ServerRow | undefined) => {
      if (!sr) return;
      const cur = this.serverRow(sr.table, sr.id);
      if (cur && cur.version > sr.version) return;
      if (sr.deleted) batch.deleteRows!.push({ table: sr.table, id: sr.id });
      else batch.putRows!.push({ table: sr.table, id: sr.id, scope: sr.scope, version: sr.version, values: sr.values });
    };
    entries.forEach((e, i) => {
      const r = res.results[i];
      const status = r?.status ?? IntentResult_Status.UNSPECIFIED;
      if (res.applied) batch.deleteOutbox!.push(e.seq);
      if (status === IntentResult_Status.APPLIED && res.applied) {
        const cur = this.serverRow(e.table, e.id);
        // Later writes of the row were made on the version this write was
        // (a pull may have brought this write's own result since).
        newVersion.set(rkey(e.table, e.id), { from: e.baseVersion, to: r!.version });
        if (e.op === IntentOp.DELETE) batch.deleteRows!.push({ table: e.table, id: e.id });
        else
          batch.putRows!.push({
            table: e.table,
            id: e.id,
            scope: cur?.scope ?? "",
            version: r!.version,
            values: { ...(cur?.values ?? {}), ...e.values },
          });
      } else if (status === IntentResult_Status.CONFLICT || status === IntentResult_Status.SUPERSEDED) {
        if (!res.applied) batch.deleteOutbox!.push(e.seq);
        take(r!.serverRow);
        const sr = r!.serverRow;
        conflicts.push({
          table: e.table,
          id: e.id,
          kind: status === IntentResult_Status.CONFLICT ? "reject" : "superseded",
          op: opName(e.op),
          values: e.values,
          serverRow: {
            values: sr?.values ?? {},
            version: sr?.version ?? 0n,
            deleted: sr?.deleted ?? true,
            scope: sr?.scope ?? "",
          },
        });
      } else if (!res.applied) {
        // Refused with the bundle for another write's conflict: it goes
        // again in the next bundle.
        batch.putOutbox!.push({ ...e, bundleId: 0n });
      }
    });
    // Later writes of the same rows were made on the version this bundle
    // replaced: move them onto the new one.
    for (const e of this.outbox) {
      if (e.bundleId !== 0n) continue;
      const nv = newVersion.get(rkey(e.table, e.id));
      if (nv && e.baseVersion === nv.from) batch.putOutbox!.push({ ...e, baseVersion: nv.to });
    }
    return { batch, conflicts };
  }

  /** The batch for the write that re-applies a rejected one on top of the server's row. */
  reapply(c: Conflict, nowMs: bigint): StorageBatch {
    const spec = this.spec(c.table);
    const keyOnly = Object.fromEntries(spec.key.map((k) => [k, c.values[k]!]));
    const exists = this.visible(c.table, c.id) !== undefined;
    let op: IntentOp;
    if (c.op === "delete") {
      if (!exists) return {};
      op = IntentOp.DELETE;
    } else {
      op = exists ? IntentOp.UPDATE : IntentOp.INSERT;
    }
    return this.write(c.table, op, op === IntentOp.DELETE ? keyOnly : c.values, nowMs).batch;
  }

  /** The batch applying pulled changes and moving the positions. */
  pulled(cb: ChangeBatch): StorageBatch {
    const batch: StorageBatch = { putRows: [], deleteRows: [] };
    const latest = new Map<string, StoredRow | undefined>();
    for (const ch of cb.changes) {
      const k = rkey(ch.table, ch.id);
      const cur = latest.has(k) ? latest.get(k) : this.serverRow(ch.table, ch.id);
      if (cur && cur.version > ch.version) continue;
      // A row that moved to another scope: at this version the copy held
      // through that scope is the row itself, and stays.
      if (ch.movedOut && cur && cur.version === ch.version && cur.scope !== "" && cur.scope !== ch.scope) continue;
      if (ch.op === IntentOp.DELETE) latest.set(k, undefined);
      else latest.set(k, { table: ch.table, id: ch.id, scope: ch.scope, version: ch.version, values: ch.values });
    }
    for (const [k, r] of latest) {
      if (r) batch.putRows!.push(r);
      else {
        const [table, id] = k.split("\u0000") as [string, string];
        batch.deleteRows!.push({ table, id });
      }
    }
    const scopes = this.scopes();
    // Forward only: a slower pull answered late must not move a scope back.
    for (const t of cb.through) if (t.sequence > (scopes.get(t.scope) ?? 0n)) scopes.set(t.scope, t.sequence);
    batch.meta = new Map([[META.scopes, formatScopes(scopes)]]);
    return batch;
  }

  /** The batch replacing the rows of the snapshotted scopes (all rows when `all`). */
  snapshotted(all: boolean, scopes: string[], rows: ServerRow[], at: { scope: string; sequence: bigint }[]): StorageBatch {
    const positions = all ? new Map<string, bigint>() : this.scopes();
    for (const a of at) positions.set(a.scope, a.sequence);
    return {
      clearRows: all,
      clearScopes: all ? undefined : [...scopes, ...at.map((a) => a.scope)],
      putRows: rows
        .filter((r) => !r.deleted)
        .map((r) => ({ table: r.table, id: r.id, scope: r.scope, version: r.version, values: r.values })),
      meta: new Map([[META.scopes, formatScopes(positions)]]),
    };
  }
}

function intentSize(e: OutboxEntry): number {
  return toBinary(
    RowIntentSchema,
    create(RowIntentSchema, { table: e.table, op: e.op, values: e.values, baseVersion: e.baseVersion, clientTimeUnixMs: e.clientTimeMs }),
  ).length;
}

/** One write on top of a row (undefined: no row). */
function overlay(values: Record<string, Value> | undefined, e: OutboxEntry): Record<string, Value> | undefined {
  switch (e.op) {
    case IntentOp.INSERT:
      return { ...e.values };
    case IntentOp.DELETE:
      return undefined;
    default:
      return values ? { ...values, ...e.values } : undefined;
  }
}

/** Two unsent writes of one row as one; undefined when they cancel out. */
function merge(
  prev: OutboxEntry,
  op: IntentOp,
  values: Record<string, Value>,
  keyOnly: Record<string, Value>,
): Pick<OutboxEntry, "op" | "values"> | undefined {
  switch (prev.op) {
    case IntentOp.INSERT:
      if (op === IntentOp.DELETE) return undefined;
      return { op: IntentOp.INSERT, values: { ...prev.values, ...values } };
    case IntentOp.UPDATE:
      if (op === IntentOp.DELETE) return { op: IntentOp.DELETE, values: keyOnly };
      return { op: IntentOp.UPDATE, values: { ...prev.values, ...values } };
    default:
      // Deleted, then inserted again: the server still has the row.
      return { op: IntentOp.UPDATE, values };
  }
}
