// SQLite storage for Node through sql.js (SQLite compiled to WebAssembly): the
// database lives in memory and every commit writes it to a file atomically
// (temporary file, fsync, rename). Each synced table is a SQL table with its
// columns, so the app can query it; `_row` holds the exact values the store
// reads back.
/// <reference types="node" />
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from "node:fs";
import type { Database, SqlValue } from "sql.js";
import type { SyncTableSpec } from "../gen/arcana/v1/offline_pb.js";
import type { Value } from "../gen/arcana/v1/value_pb.js";
import { fromValue, valueText } from "../values.js";
import { decodeIntent, decodeTables, decodeValues, encodeIntent, encodeTables, encodeValues } from "./codec.js";
import type { OfflineStorage, StorageBatch, StoredRow, StoredState } from "./storage.js";

const AFFINITY: Record<string, string> = {
  int: "INTEGER",
  bool: "INTEGER",
  float: "REAL",
  bytes: "BLOB",
};

/** A SQL identifier, quoted. */
export function ident(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** A value as its SQL column stores it (for queries; `_row` is what is read back). */
export function sqlValue(v: Value | undefined): SqlValue {
  const x = fromValue(v, { json: "text" });
  if (x === null || typeof x === "number" || x instanceof Uint8Array) return x;
  if (typeof x === "boolean") return x ? 1 : 0;
  if (typeof x === "bigint") {
    // Beyond 2^53 a number would lose digits: such integers are stored as text.
    return x >= BigInt(Number.MIN_SAFE_INTEGER) && x <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(x) : x.toString();
  }
  return valueText(v); // the text kinds, and timestamps in ISO 8601
}

export class SqlJsStorage implements OfflineStorage {
  private constructor(
    private readonly db: Database,
    private readonly file: string,
  ) {}

  /** Opens (or creates) the SQLite file. */
  static async open(file: string): Promise<SqlJsStorage> {
    const { default: initSqlJs } = await import("sql.js");
    const SQL = await initSqlJs();
    const db = existsSync(file) ? new SQL.Database(readFileSync(file)) : new SQL.Database();
    db.exec(`
      CREATE TABLE IF NOT EXISTS _meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS _specs (id INTEGER PRIMARY KEY CHECK (id = 1), data BLOB NOT NULL);
      CREATE TABLE IF NOT EXISTS _outbox (seq INTEGER PRIMARY KEY, row_id TEXT NOT NULL, bundle_id TEXT NOT NULL, intent BLOB NOT NULL);
    `);
    return new SqlJsStorage(db, file);
  }

  /** The sql.js database, for read-only queries of the synced tables. */
  get database(): Database {
    return this.db;
  }

  async load(): Promise<StoredState> {
    const meta = new Map<string, string>();
    for (const r of this.all("SELECT key, value FROM _meta")) meta.set(r[0] as string, r[1] as string);
    const spec = this.all("SELECT data FROM _specs WHERE id = 1")[0];
    const tables = spec ? decodeTables(spec[0] as Uint8Array) : [];
    const rows: StoredRow[] = [];
    for (const t of tables) {
      for (const r of this.all(`SELECT _id, _scope, _version, _row FROM ${ident(t.name)}`)) {
        rows.push({
          table: t.name,
          id: r[0] as string,
          scope: r[1] as string,
          version: BigInt(r[2] as string),
          values: decodeValues(r[3] as Uint8Array),
        });
      }
    }
    const outbox = this.all("SELECT seq, row_id, bundle_id, intent FROM _outbox ORDER BY seq").map((r) =>
      decodeIntent(Number(r[0]), r[1] as string, BigInt(r[2] as string), r[3] as Uint8Array),
    );
    return { meta, tables, rows, outbox };
  }

  async commit(b: StorageBatch): Promise<void> {
    const db = this.db;
    db.exec("BEGIN");
    try {
      const tables = b.tables ?? this.tables();
      if (b.tables) this.recreate(b.tables);
      if (b.clearRows) for (const t of tables) db.run(`DELETE FROM ${ident(t.name)}`);
      for (const s of b.clearScopes ?? []) {
        for (const t of tables) db.run(`DELETE FROM ${ident(t.name)} WHERE _scope = ?`, [s]);
      }
      for (const d of b.deleteRows ?? []) db.run(`DELETE FROM ${ident(d.table)} WHERE _id = ?`, [d.id]);
      const specs = new Map(tables.map((t) => [t.name, t]));
      for (const r of b.putRows ?? []) {
        const spec = specs.get(r.table);
        if (!spec) continue;
        const cols = spec.columns.map((c) => ident(c.name));
        db.run(
          `INSERT OR REPLACE INTO ${ident(r.table)} (_id, _scope, _version, _row${cols.map((c) => `, ${c}`).join("")})
           VALUES (?, ?, ?, ?${cols.map(() => ", ?").join("")})`,
          [r.id, r.scope, r.version.toString(), encodeValues(r.values), ...spec.columns.map((c) => sqlValue(r.values[c.name]))],
        );
      }
      for (const q of b.deleteOutbox ?? []) db.run("DELETE FROM _outbox WHERE seq = ?", [q]);
      for (const e of b.putOutbox ?? []) {
        db.run("INSERT OR REPLACE INTO _outbox (seq, row_id, bundle_id, intent) VALUES (?, ?, ?, ?)", [
          e.seq,
          e.id,
          e.bundleId.toString(),
          encodeIntent(e),
        ]);
      }
      for (const [k, v] of b.meta ?? []) db.run("INSERT OR REPLACE INTO _meta (key, value) VALUES (?, ?)", [k, v]);
      db.exec("COMMIT");
    } catch (e) {
      db.exec("ROLLBACK");
      throw e;
    }
    this.persist();
  }

  async close(): Promise<void> {
    this.db.close();
  }

  private tables(): SyncTableSpec[] {
    const spec = this.all("SELECT data FROM _specs WHERE id = 1")[0];
    return spec ? decodeTables(spec[0] as Uint8Array) : [];
  }

  private recreate(next: SyncTableSpec[]): void {
    for (const t of this.tables()) this.db.run(`DROP TABLE IF EXISTS ${ident(t.name)}`);
    for (const t of next) {
      const cols = t.columns.map((c) => `${ident(c.name)} ${AFFINITY[c.kind] ?? "TEXT"}`);
      this.db.run(
        `CREATE TABLE ${ident(t.name)} (_id TEXT PRIMARY KEY, _scope TEXT NOT NULL, _version INTEGER NOT NULL, _row BLOB NOT NULL${cols.map((c) => `, ${c}`).join("")})`,
      );
      this.db.run(`CREATE INDEX ${ident(`${t.name}__scope`)} ON ${ident(t.name)} (_scope)`);
    }
    this.db.run("INSERT OR REPLACE INTO _specs (id, data) VALUES (1, ?)", [encodeTables(next)]);
  }

  private all(sql: string): SqlValue[][] {
    const res = this.db.exec(sql);
    return res[0]?.values ?? [];
  }

  /** Writes the whole database next to the file, syncs it, and renames it over. */
  private persist(): void {
    const data = this.db.export();
    const tmp = `${this.file}.tmp`;
    const fd = openSync(tmp, "w");
    try {
      writeSync(fd, data);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.file);
  }
}
