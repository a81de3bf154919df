// The normalized row cache shared by every view of a client.
import type { Ref } from "./gen/arcana/v1/value_pb.js";
import type { FieldValue } from "./values.js";

/** A row's fields, decoded. Replaced (never mutated) when the row changes. */
export type Fields = Readonly<Record<string, FieldValue>>;

/** One field step of a row patch, already decoded. */
export interface FieldStep {
  op: "add" | "remove" | "replace";
  field: string;
  value?: FieldValue;
}

interface Entry {
  fields: Fields;
  /** How many views reach this row. */
  holders: number;
}

/** The cache key of a row. */
export function rowKey(table: string, id: string): string {
  return `${table}\u0000${id}`;
}

/** Splits a cache key into table and id. */
export function splitKey(key: string): { table: string; id: string } {
  const i = key.indexOf("\u0000");
  return { table: key.slice(0, i), id: key.slice(i + 1) };
}

/**
 * The local change of one optimistic mutation, shown over the server's rows
 * until the mutation settles.
 */
export interface Layer {
  /** Fields overlaid on rows, by cache key. */
  readonly rows: Map<string, Record<string, FieldValue>>;
  /** Rows hidden from every view's top level, by cache key. */
  readonly removed: Set<string>;
  /** Rows shown in a view that the server has not sent yet. */
  readonly inserts: { view: unknown; ref: Ref; index: number | undefined }[];
}

/**
 * Rows by (table, id). A row stays while at least one view reaches it
 * (reference counted by the views) and is dropped when the last one lets go.
 * Views that select different columns of one table share the row: fields
 * they deliver are merged.
 */
export class RowCache {
  private readonly rows = new Map<string, Entry>();
  private readonly listeners = new Set<(keys: ReadonlySet<string>, source: unknown) => void>();
  private readonly layers = new Set<Layer>();
  /** Rows as views see them while layers are on: base merged with layers. */
  private merged = new Map<string, Fields | undefined>();
  /** Callers of `watch`, by cache key. */
  private readonly watchers = new Map<string, Set<() => void>>();
  /** Watched keys touched since watchers were last told. */
  private touched: Set<string> | undefined;

  /** Number of rows held. */
  get size(): number {
    return this.rows.size;
  }

  /** A row's fields as views show them (optimistic changes included), if held. */
  get(table: string, id: string): Fields | undefined {
    return this.read(rowKey(table, id));
  }

  /** A row as the server sent it, by cache key (no optimistic changes). */
  getByKey(key: string): Fields | undefined {
    return this.rows.get(key)?.fields;
  }

  /** A row by cache key as views show it: the server's fields under any optimistic layers. */
  read(key: string): Fields | undefined {
    const base = this.rows.get(key)?.fields;
    if (this.layers.size === 0) return base;
    if (this.merged.has(key)) return this.merged.get(key);
    let out: Record<string, FieldValue> | undefined;
    for (const l of this.layers) {
      const f = l.rows.get(key);
      if (f) out = { ...(out ?? base ?? {}), ...f };
    }
    const m = out ? Object.freeze(out) : base;
    this.merged.set(key, m);
    return m;
  }

  /** Optimistic layers, oldest first. */
  get optimistic(): ReadonlySet<Layer> {
    return this.layers;
  }

  /** Whether an optimistic layer hides the row. */
  hidden(key: string): boolean {
    for (const l of this.layers) if (l.removed.has(key)) return true;
    return false;
  }

  /** @internal Puts an optimistic layer on; the caller re-renders the views. */
  addLayer(l: Layer): void {
    this.layers.add(l);
    this.merged = new Map();
    this.touchAll();
  }

  /** @internal Takes an optimistic layer off. */
  removeLayer(l: Layer): boolean {
    this.merged = new Map();
    this.touchAll();
    return this.layers.delete(l);
  }

  /**
   * Calls `fn` after the row at (`table`, `id`) may read differently through
   * `get`: it arrived, changed, left the cache, or an optimistic change to it
   * came or went. Calls come in a microtask, once for all the changes of a
   * frame or batch, and may come when nothing changed: compare `get` results.
   * Watching does not keep the row in the cache. Returns the stop function.
   */
  watch(table: string, id: string, fn: () => void): () => void {
    const key = rowKey(table, id);
    let set = this.watchers.get(key);
    if (!set) this.watchers.set(key, (set = new Set()));
    set.add(fn);
    return () => {
      set.delete(fn);
      if (set.size === 0 && this.watchers.get(key) === set) this.watchers.delete(key);
    };
  }

  private touch(key: string): void {
    if (!this.watchers.has(key)) return;
    if (!this.touched) {
      this.touched = new Set();
      // Later: a frame's writes, retains and releases land before anyone reads.
      queueMicrotask(() => this.tell());
    }
    this.touched.add(key);
  }

  private touchAll(): void {
    for (const k of this.watchers.keys()) this.touch(k);
  }

  private tell(): void {
    const keys = this.touched;
    this.touched = undefined;
    if (!keys) return;
    for (const k of keys) {
      for (const fn of [...(this.watchers.get(k) ?? [])]) fn();
    }
  }

  /** How many views reach a row (0 when absent). */
  holders(table: string, id: string): number {
    return this.rows.get(rowKey(table, id))?.holders ?? 0;
  }

  /** All cache keys held. */
  keys(): IterableIterator<string> {
    return this.rows.keys();
  }

  /** Calls `fn` with the keys of rows whose fields changed, after each frame. */
  onChange(fn: (keys: ReadonlySet<string>, source: unknown) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Writes a full row as a view delivered it, merging with fields held already. */
  put(key: string, fields: Record<string, FieldValue>, changed: Set<string>): void {
    const e = this.rows.get(key);
    this.merged.delete(key);
    if (!e) {
      this.rows.set(key, { fields: Object.freeze({ ...fields }), holders: 0 });
      changed.add(key);
      this.touch(key);
      return;
    }
    let same = true;
    for (const [k, v] of Object.entries(fields)) {
      if (!sameValue(e.fields[k], v)) {
        same = false;
        break;
      }
    }
    if (same) return;
    e.fields = Object.freeze({ ...e.fields, ...fields });
    changed.add(key);
    this.touch(key);
  }

  /** Applies field steps to a held row; false if the row is not held. */
  patch(key: string, steps: readonly FieldStep[], changed: Set<string>): boolean {
    const e = this.rows.get(key);
    if (!e) return false;
    this.merged.delete(key);
    const next: Record<string, FieldValue> = { ...e.fields };
    for (const s of steps) {
      if (s.op === "remove") delete next[s.field];
      else next[s.field] = s.value ?? null;
    }
    e.fields = Object.freeze(next);
    changed.add(key);
    this.touch(key);
    return true;
  }

  /** Counts one more view reaching `key`. */
  retain(key: string): void {
    const e = this.rows.get(key);
    if (e) e.holders++;
  }

  /** Counts one view fewer reaching `key`; drops the row at zero. */
  release(key: string): void {
    const e = this.rows.get(key);
    if (!e) return;
    e.holders--;
    if (e.holders > 0) return;
    this.rows.delete(key);
    this.merged.delete(key);
    this.touch(key);
  }

  /** Drops rows written by a frame that no view ended up reaching. */
  sweep(keys: Iterable<string>): void {
    for (const k of keys) {
      const e = this.rows.get(k);
      if (e && e.holders <= 0) {
        this.rows.delete(k);
        this.merged.delete(k);
        this.touch(k);
      }
    }
  }

  /** @internal */
  emit(changed: ReadonlySet<string>, source: unknown): void {
    if (changed.size === 0) return;
    for (const fn of [...this.listeners]) fn(changed, source);
  }
}

function sameValue(a: FieldValue | undefined, b: FieldValue): boolean {
  if (a === b) return true;
  if (a instanceof Date && b instanceof Date) return a.getTime() === b.getTime();
  if (typeof a === "object" || typeof b === "object") return false; // json, bytes: assume changed
  return false;
}
