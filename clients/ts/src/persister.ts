// Keeps views and their rows in a persist store between page loads: restores
// them into new views, and writes what changed a little later, in one go.
import { type Fields, type RowCache } from "./cache.js";
import type { PersistStore, PersistedView } from "./persist.js";
import type { ViewRegistry } from "./registry.js";
import { type LiveView, collectKeys } from "./view.js";

export interface PersisterOptions {
  store?: PersistStore;
  /** How long changes gather before one write, in ms. */
  delayMs?: number;
  /** Most views kept; the least recently saved go first. */
  maxViews?: number;
}

export class Persister {
  /** Set while the store loads; sessions wait for it so Sync can use what it held. */
  readonly loaded: Promise<void> | undefined;
  private persisted = new Map<string, PersistedView>();
  /** Rows as the store holds them (what to write, what to delete). */
  private storedRows = new Map<string, Fields>();
  private dirty = new Set<LiveView<any>>();
  private dropped = new Set<string>();
  private flushTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly opts: PersisterOptions,
    private readonly cache: RowCache,
    private readonly registry: ViewRegistry,
  ) {
    if (opts.store) {
      this.loaded = opts.store.load().then(
        (state) => this.hydrate(state.views, state.rows),
        () => {}, // an unreadable store is an empty one
      );
    }
  }

  /** Takes what the store held; views opened meanwhile show it at once. */
  private hydrate(views: PersistedView[], rows: [string, Fields][]): void {
    this.storedRows = new Map(rows);
    for (const p of views) this.persisted.set(p.key, p);
    for (const v of this.registry.byKey.values()) this.adopt(v);
  }

  /** Shows a new view's persisted state, if there is one. */
  adopt(v: LiveView<any>): void {
    const p = this.persisted.get(v.key);
    if (!p || v.epoch !== undefined || v.status !== "connecting") return;
    const keys = new Set<string>();
    for (const r of p.refs) collectKeys(r, keys);
    const unused = new Set<string>();
    for (const k of keys) {
      const f = this.storedRows.get(k);
      if (f && !this.cache.getByKey(k)) this.cache.put(k, { ...f }, unused);
    }
    // Bound first: frames of this view id must find it (bind skips a view whose id is set).
    this.registry.bind(v, p.id);
    v.hydrate(p);
  }

  /** Notes that a view changed: it is written with the next flush. */
  markDirty(v: LiveView<any>): void {
    if (!this.opts.store) return;
    this.dirty.add(v);
    this.scheduleFlush();
  }

  /** Drops a view from the store (its rows go once no other view reaches them). */
  forget(key: string): void {
    if (!this.opts.store || !this.persisted.delete(key)) return;
    this.dropped.add(key);
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushTimer) return;
    this.flushTimer = setTimeout(() => void this.flush(), this.opts.delayMs ?? 100);
  }

  /** Flushes now if a flush is pending. */
  flushPending(): void {
    if (this.flushTimer) void this.flush();
  }

  /** Writes the changed views and their rows; drops rows no persisted view reaches. */
  async flush(): Promise<void> {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    const store = this.opts.store;
    if (!store) return;
    const views: PersistedView[] = [];
    const rows: [string, Fields][] = [];
    const now = Date.now();
    for (const v of this.dirty) {
      if (v.epoch === undefined || !v.id || v.status === "error") continue;
      const p: PersistedView = {
        key: v.key,
        graph: v.graph,
        id: v.id,
        epoch: v.epoch,
        version: v.version,
        total: v.total,
        refs: [...v.refs],
        ...(v.edges ? { edges: v.edges } : {}),
        savedAt: now,
      };
      this.persisted.set(v.key, p);
      this.dropped.delete(v.key);
      views.push(p);
      for (const k of v.reached) {
        const f = this.cache.getByKey(k);
        if (f && this.storedRows.get(k) !== f) {
          this.storedRows.set(k, f);
          rows.push([k, f]);
        }
      }
    }
    this.dirty.clear();
    const max = this.opts.maxViews ?? 100;
    if (this.persisted.size > max) {
      const oldest = [...this.persisted.values()].sort((a, b) => a.savedAt - b.savedAt);
      for (const p of oldest.slice(0, this.persisted.size - max)) {
        this.persisted.delete(p.key);
        this.dropped.add(p.key);
      }
    }
    const keep = new Set<string>();
    for (const p of this.persisted.values()) for (const r of p.refs) collectKeys(r, keep);
    const deleteRows: string[] = [];
    for (const k of this.storedRows.keys()) {
      if (!keep.has(k)) {
        this.storedRows.delete(k);
        deleteRows.push(k);
      }
    }
    const deleteViews = [...this.dropped];
    this.dropped.clear();
    if (views.length + deleteViews.length + rows.length + deleteRows.length === 0) return;
    try {
      await store.write({ views, deleteViews, rows: rows.filter(([k]) => keep.has(k)), deleteRows });
    } catch {
      // Persistence is a cache: a failed write costs a snapshot on the next load.
    }
  }
}
