// Live views: the state of one subscription, kept up to date by frames.
import type { Ref, Row, RowPatch, Value } from "./gen/arcana/v1/value_pb.js";
import { PatchOp } from "./gen/arcana/v1/value_pb.js";
import type { ViewFrame } from "./gen/arcana/v1/view_pb.js";
import { type FieldStep, type Fields, type RowCache, rowKey } from "./cache.js";
import { ArcanaError } from "./errors.js";
import { type DecodeOptions, type FieldValue, type Params, fromFields, fromValue } from "./values.js";
import type { WindowSpec } from "./window.js";
import type { ClientStatus } from "./client.js";

/** A row of a view: its fields, plus one property per nested reference. */
export type Item = { readonly [field: string]: FieldValue | Item | undefined };

/** Where a view stands. */
export type ViewStatus =
  /** No data yet: waiting for the session and the first snapshot (`error` tells why it is taking long). */
  | "connecting"
  /** Up to date with the server. */
  | "live"
  /**
   * Showing data that may be out of date: the last state seen before the
   * connection dropped, or a state restored from a persist store, until the
   * server confirms or updates it. `error` holds the connection error, if any.
   */
  | "stale"
  /** The subscription was refused or cannot be restored; see `error`. */
  | "error"
  /** Closed by the caller. */
  | "closed";

/** How a view was restored after a reconnect. */
export interface SyncInfo {
  mode: "catch_up" | "snapshot" | "current";
  epoch: bigint;
  version: bigint;
  /** Number of diff frames the server replayed (catch-up only). */
  frames: number;
}

/** An immutable picture of a view; a new object after every change. */
export interface ViewSnapshot<T = Item> {
  readonly items: readonly T[];
  readonly total: bigint | undefined;
  readonly status: ViewStatus;
  /**
   * The last error: a refused subscription (`error` status), the connection
   * error while `connecting` or `stale`, or an error frame (data kept).
   * Cleared by the next good frame.
   */
  readonly error: ArcanaError | undefined;
  readonly epoch: bigint | undefined;
  readonly version: bigint;
  /** Windowed views: whether the list goes on before and after the rows held. */
  readonly edges?: WindowEdgesState;
}

/** Whether rows exist beyond a window's edges. */
export interface WindowEdgesState {
  readonly hasBefore: boolean;
  readonly hasAfter: boolean;
}

/**
 * @internal A re-anchor on its way: the window asked for and, once the
 * server replied, the position at which the view holds it.
 */
export interface Moving {
  readonly window: WindowSpec;
  epoch?: bigint;
  version?: bigint;
  /** The view is being resynced onto the new window: the next snapshot holds it. */
  bySnapshot?: boolean;
}

/** The outcome of applying a frame. */
export type Applied = "applied" | "stale" | "gap" | "error";

interface Memo {
  row: Fields | undefined;
  nested: Item[];
  item: Item;
}

/** @internal The hooks a view uses to talk to its client. */
export interface ViewHost {
  readonly cache: RowCache;
  readonly decode: DecodeOptions;
  release(view: LiveView<any>): void;
  /** Asks the server to bring the view back in line (after a gap). */
  resync(view: LiveView<any>): void;
  /** Told after a frame changed the view's state (for persistence). */
  committed?(view: LiveView<any>): void;
  /**
   * While a batch of frames is being applied: takes note that `view` changed
   * and returns true; its listeners are called once the batch is applied.
   */
  defer?(view: LiveView<any>): boolean;
}

/**
 * A live view of one graph with one set of params. Shared: every
 * `client.view()` call with the same graph and params returns the same view,
 * and each call must be balanced by a `close()`.
 */
export class LiveView<T = Item> implements AsyncIterable<ViewSnapshot<T>> {
  /** The view id, "<graph>/<params_hash>", once subscribed. */
  id: string | undefined;
  /** @internal The window the view holds (windowed graphs only). */
  window: WindowSpec | undefined;
  /** @internal A re-anchor in flight, if any. */
  moving: Moving | undefined;
  /**
   * @internal The key the view had when its id was given: a view re-anchored
   * in place keeps the id of the window it left (the server's alias).
   */
  origin: string | undefined;
  private _edges: WindowEdgesState | undefined;
  /** Windowed views: the wire fields of the top-level rows, for cursors exact to the last digit. */
  private _wire: Map<string, Readonly<Record<string, Value>>> | undefined;
  private _epoch: bigint | undefined;
  private _version = 0n;
  private _refs: Ref[] = [];
  private _total: bigint | undefined;
  private _reached = new Set<string>();
  private _status: ViewStatus = "connecting";
  private _error: ArcanaError | undefined;
  private _snapshot: ViewSnapshot<T> | undefined;
  private _memo = new WeakMap<Ref, Memo>();
  private readonly listeners = new Set<(s: ViewSnapshot<T>) => void>();
  /** @internal Handles open on this view. */
  handles = 0;
  /** How the view was last restored by Sync (after a reconnect or a gap). */
  lastSync: SyncInfo | undefined;
  /** @internal Set while a resync request is in flight. */
  resyncing = false;

  constructor(
    readonly graph: string,
    readonly params: Params,
    /** @internal */ public key: string,
    private readonly host: ViewHost,
    window?: WindowSpec,
  ) {
    this.window = window;
    if (window) this._wire = new Map();
    track(this, host.cache);
  }

  get status(): ViewStatus {
    return this._status;
  }
  get error(): ArcanaError | undefined {
    return this._error;
  }
  get epoch(): bigint | undefined {
    return this._epoch;
  }
  get version(): bigint {
    return this._version;
  }
  get total(): bigint | undefined {
    return this._total;
  }
  /** Windowed views: whether rows exist before and after the window (unknown before the first snapshot). */
  get edges(): WindowEdgesState | undefined {
    return this._edges;
  }
  /**
   * @internal The named fields of a top-level row as the server sent them;
   * undefined when the view lacks one of them (a row restored from a persist store).
   */
  wireFields(r: Ref, names: readonly string[]): Value[] | undefined {
    const f = this._wire?.get(rowKey(r.table, r.id));
    if (!f) return undefined;
    const out: Value[] = [];
    for (const n of names) {
      const v = f[n];
      if (!v) return undefined;
      out.push(v);
    }
    return out;
  }
  /** The top-level refs, in order. */
  get refs(): readonly Ref[] {
    return this._refs;
  }
  /** Cache keys of every row the view reaches (nested included). */
  get reached(): ReadonlySet<string> {
    return this._reached;
  }
  get items(): readonly T[] {
    return this.snapshot.items;
  }

  /** The top-level refs as shown: the server's, with optimistic removals and inserts applied. */
  private shownRefs(): readonly Ref[] {
    const cache = this.host.cache;
    const layers = cache.optimistic;
    if (layers.size === 0) return this._refs;
    const out = this._refs.filter((r) => !cache.hidden(rowKey(r.table, r.id)));
    for (const l of layers) {
      for (const ins of l.inserts) {
        if (ins.view !== this) continue;
        const k = rowKey(ins.ref.table, ins.ref.id);
        if (out.some((r) => rowKey(r.table, r.id) === k)) continue; // the server's row arrived
        out.splice(ins.index === undefined ? out.length : Math.min(ins.index, out.length), 0, ins.ref);
      }
    }
    return out;
  }

  /** The current state as an immutable object (stable until the next change). */
  get snapshot(): ViewSnapshot<T> {
    if (!this._snapshot) {
      this._snapshot = Object.freeze({
        items: Object.freeze(this.shownRefs().map((r) => this.materialize(r) as T)),
        total: this._total,
        status: this._status,
        error: this._error,
        epoch: this._epoch,
        version: this._version,
        ...(this.window ? { edges: this._edges ?? NO_EDGES } : {}),
      });
    }
    return this._snapshot;
  }

  /**
   * Calls `fn` with the current snapshot at once, then after every change;
   * returns the function that stops it. This is the Svelte store contract, so
   * a view can be used as a readable store (`$view`).
   */
  subscribe(fn: (s: ViewSnapshot<T>) => void): () => void {
    this.listeners.add(fn);
    fn(this.snapshot);
    return () => {
      this.listeners.delete(fn);
    };
  }

  /** Resolves with the first snapshot; rejects if the subscription fails. */
  ready(): Promise<ViewSnapshot<T>> {
    return this.until((s) => s.epoch !== undefined);
  }

  /**
   * Resolves with the first state `pred` accepts (the current one included).
   * Rejects when the view fails or closes first, or after `timeoutMs`.
   */
  until(pred: (s: ViewSnapshot<T>) => boolean, timeoutMs?: number): Promise<ViewSnapshot<T>> {
    return until((fn) => this.subscribe(fn), pred, `view ${this.graph}`, timeoutMs);
  }

  /** Yields the current state, then every change (coalescing if the reader is slow). */
  [Symbol.asyncIterator](): AsyncIterator<ViewSnapshot<T>> {
    let latest: ViewSnapshot<T> | undefined = this.snapshot;
    let wake: (() => void) | undefined;
    let done = false;
    const off = this.subscribe((s) => {
      latest = s;
      wake?.();
    });
    const finish = (): IteratorResult<ViewSnapshot<T>> => {
      done = true;
      off();
      return { done: true, value: undefined };
    };
    return {
      next: async () => {
        for (;;) {
          if (done) return { done: true, value: undefined };
          if (latest) {
            const s: ViewSnapshot<T> = latest;
            latest = undefined;
            if (s.status === "error") {
              finish();
              throw s.error ?? new ArcanaError(2, "view failed");
            }
            if (s.status === "closed") return finish();
            return { done: false, value: s };
          }
          await new Promise<void>((r) => (wake = r));
          wake = undefined;
        }
      },
      return: async () => finish(),
    };
  }

  /** Lets go of this handle; the subscription ends when the last one closes. */
  close(): void {
    if (this._status === "closed" || this.handles <= 0) return;
    this.host.release(this);
  }

  // ---- internal: driven by the client ------------------------------------

  /** @internal */
  setStatus(status: ViewStatus, error?: ArcanaError): void {
    if (status === this._status && error === undefined) return;
    this._status = status;
    if (error !== undefined) this._error = error;
    this.changed();
  }

  /** @internal Takes a persisted state: shown at once, marked stale until the server confirms it. */
  hydrate(state: {
    id: string;
    epoch: bigint;
    version: bigint;
    total: bigint | undefined;
    refs: Ref[];
    edges?: WindowEdgesState;
  }): void {
    const next = new Set<string>();
    for (const r of state.refs) collectKeys(r, next);
    for (const k of next) this.host.cache.retain(k);
    for (const k of this._reached) this.host.cache.release(k);
    this._reached = next;
    this.id = state.id;
    this._refs = state.refs;
    this._total = state.total;
    if (state.edges) this._edges = state.edges;
    this._epoch = state.epoch;
    this._version = state.version;
    this._status = "stale";
    this.changed();
  }

  /** @internal Applies one frame for this view. */
  apply(frame: ViewFrame): Applied {
    const body = frame.body;
    switch (body.case) {
      case "snapshot": {
        if (this._epoch === frame.epoch && frame.version < this._version) return "stale";
        const s = body.value;
        const changed = new Set<string>();
        const written: string[] = [];
        for (const row of s.rows) {
          const k = rowKey(row.table, row.id);
          this.host.cache.put(k, fromFields(row.fields, this.host.decode), changed);
          written.push(k);
        }
        this._refs = s.refs;
        this._total = s.total;
        if (s.window) this._edges = { hasBefore: s.window.hasBefore, hasAfter: s.window.hasAfter };
        if (this._wire) {
          this._wire = new Map();
          this.keepWire(s.rows);
        }
        this.commit(frame, changed, written, true);
        return "applied";
      }
      case "diff": {
        if (this._epoch === frame.epoch && frame.version <= this._version) return "stale";
        // A re-anchor diff may start from another life of the view (prev_epoch).
        const base = frame.prevEpoch !== 0n ? frame.prevEpoch : frame.epoch;
        if (this._epoch !== base || frame.prevVersion !== this._version) return "gap";
        const d = body.value;
        const refs = applyRefOps(this._refs, d.refs);
        if (!refs) return "gap";
        const steps = d.patches.map((p) => [rowKey(p.table, p.id), fieldSteps(p, this.host.decode)] as const);
        const newRows = new Set(d.rows.map((r) => rowKey(r.table, r.id)));
        for (const [k] of steps) {
          if (!this.host.cache.getByKey(k) && !newRows.has(k)) return "gap";
        }
        const changed = new Set<string>();
        const written: string[] = [];
        for (const row of d.rows) {
          const k = rowKey(row.table, row.id);
          this.host.cache.put(k, fromFields(row.fields, this.host.decode), changed);
          written.push(k);
        }
        for (const [k, st] of steps) this.host.cache.patch(k, st, changed);
        this._refs = refs;
        if (d.total !== undefined) this._total = d.total;
        if (d.window) this._edges = { hasBefore: d.window.hasBefore, hasAfter: d.window.hasAfter };
        if (this._wire) {
          this.keepWire(d.rows);
          for (const p of d.patches) patchWire(this._wire, p);
        }
        this.commit(frame, changed, written, false);
        return "applied";
      }
      case "error": {
        const e = body.value;
        this._error = new ArcanaError(e.code, e.message);
        this.changed();
        return "error";
      }
      default:
        return "stale";
    }
  }

  private keepWire(rows: readonly Row[]): void {
    for (const row of rows) this._wire!.set(rowKey(row.table, row.id), row.fields);
  }

  /** @internal The server answered a re-anchor: the view holds the new window at (epoch, version). */
  reanchored(epoch: bigint, version: bigint): void {
    const m = this.moving;
    if (!m) return;
    m.epoch = epoch;
    m.version = version;
    // The diff may have come first (grpc-web: the reply and the stream race).
    if (this.arrived(false)) this.changed();
  }

  /** Takes the new window once the view reached the re-anchor's position. */
  private arrived(snapshot: boolean): boolean {
    const m = this.moving;
    if (!m) return false;
    const reached =
      (m.bySnapshot && snapshot) ||
      (m.epoch !== undefined && this._epoch === m.epoch && this._version >= m.version!);
    if (!reached) return false;
    this.window = m.window;
    this.moving = undefined;
    return true;
  }

  private commit(frame: ViewFrame, changed: Set<string>, written: string[], snapshot: boolean): void {
    const cache = this.host.cache;
    const next = new Set<string>();
    for (const r of this._refs) collectKeys(r, next);
    for (const k of next) if (!this._reached.has(k)) cache.retain(k);
    for (const k of this._reached) if (!next.has(k)) cache.release(k);
    cache.sweep(written);
    this._reached = next;
    if (this._wire) {
      const top = new Set(this._refs.map((r) => rowKey(r.table, r.id)));
      for (const k of this._wire.keys()) if (!top.has(k)) this._wire.delete(k);
    }
    this._epoch = frame.epoch;
    this._version = frame.version;
    this.arrived(snapshot);
    this._error = undefined;
    // While a sync is in flight the view is live only once the reply confirms it.
    if (!this.resyncing && (this._status === "connecting" || this._status === "stale")) this._status = "live";
    // Other views reaching a changed row re-render too.
    cache.emit(changed, this);
    this.host.committed?.(this);
    this.changed();
  }

  /** @internal Called when another view changed rows in the shared cache. */
  rowsChanged(keys: ReadonlySet<string>): void {
    for (const k of keys) {
      if (this._reached.has(k)) {
        this.changed();
        return;
      }
    }
  }

  /** @internal Drops the view's rows from the cache (on close or failure). */
  dropRows(): void {
    for (const k of this._reached) this.host.cache.release(k);
    this._reached = new Set();
    this._refs = [];
    this._wire?.clear();
  }

  /** @internal */
  changed(): void {
    this._snapshot = undefined;
    track(this, this.host.cache);
    // A re-anchor diff may come before the reply that says it is one: hold
    // listeners back until the reply, so they never see the new rows under
    // the old window.
    const m = this.moving;
    if (m && m.epoch === undefined && !m.bySnapshot) return;
    if (this.listeners.size === 0 || this.host.defer?.(this)) return;
    const s = this.snapshot;
    for (const fn of [...this.listeners]) {
      try {
        fn(s);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }

  private materialize(r: Ref): Item {
    const row = this.host.cache.read(rowKey(r.table, r.id));
    const names = Object.keys(r.nested);
    const nested = names.map((n) => this.materialize(r.nested[n]!));
    const m = this._memo.get(r);
    if (m && m.row === row && m.nested.every((x, i) => x === nested[i])) return m.item;
    let item: Item;
    if (names.length === 0 && row) {
      item = row;
    } else {
      const o: Record<string, FieldValue | Item | undefined> = { ...(row ?? {}) };
      names.forEach((n, i) => (o[n] = nested[i]));
      item = Object.freeze(o);
    }
    this._memo.set(r, { row, nested, item });
    return item;
  }
}

// ---- status of a client's views, for status displays (useStatus) ---------------

/** One open view as `clientStatus` lists it. */
export interface OpenViewStatus {
  readonly graph: string;
  readonly params: Params;
  /** The server's view id, once subscribed. */
  readonly id: string | undefined;
  /** Whether the view holds a window (from `client.window`). */
  readonly windowed: boolean;
  /** `connecting` while it has no data yet (loading), then `live`, `stale` or `error`. */
  readonly status: ViewStatus;
  readonly error: ArcanaError | undefined;
}

/** A client's connection and the state of each view it holds open. */
export interface ClientStatusSnapshot {
  /** The connection: `idle`, `connecting`, `open`, `reconnecting`, `failed` or `closed`. */
  readonly status: ClientStatus;
  /** The error behind the last failed connection attempt (none while open). */
  readonly error: ArcanaError | undefined;
  /** The views not closed yet, oldest first (a refused one stays, in `error`, until closed). */
  readonly views: readonly OpenViewStatus[];
}

/** What `clientStatus` needs of a client (an `ArcanaClient` or a typed one). */
export interface StatusSource {
  readonly cache: RowCache;
  readonly status: ClientStatus;
  readonly lastError: ArcanaError | undefined;
  onStatus(fn: (s: ClientStatus, error?: ArcanaError) => void): () => void;
}

/** A client's views not closed yet, found by its cache (views hold that, not the client). */
interface Tracked {
  readonly views: Map<LiveView<any>, OpenViewStatus>;
  readonly listeners: Set<() => void>;
  /** Counts changes to `views`, so a status list is rebuilt only after one. */
  version: number;
}

const tracked = new WeakMap<RowCache, Tracked>();

function trackedBy(cache: RowCache): Tracked {
  let t = tracked.get(cache);
  if (!t) tracked.set(cache, (t = { views: new Map(), listeners: new Set(), version: 0 }));
  return t;
}

/** Keeps a view's entry current; called when it is made and on every change. */
function track(v: LiveView<any>, cache: RowCache): void {
  const t = trackedBy(cache);
  const was = t.views.get(v);
  if (v.status === "closed") {
    if (!t.views.delete(v)) return;
  } else if (was && was.status === v.status && was.error === v.error && was.id === v.id) {
    return;
  } else {
    t.views.set(
      v,
      Object.freeze({ graph: v.graph, params: v.params, id: v.id, windowed: !!v.window, status: v.status, error: v.error }),
    );
  }
  t.version++;
  for (const fn of [...t.listeners]) fn();
}

const statusMemo = new WeakMap<Tracked, { version: number; snap: ClientStatusSnapshot }>();

/**
 * The client's connection status and its open views' statuses, as one frozen
 * object that stays the same until one of them changes.
 */
export function clientStatus(client: StatusSource): ClientStatusSnapshot {
  const t = trackedBy(client.cache);
  const m = statusMemo.get(t);
  if (m && m.version === t.version && m.snap.status === client.status && m.snap.error === client.lastError) {
    return m.snap;
  }
  const views = m && m.version === t.version ? m.snap.views : Object.freeze([...t.views.values()]);
  const snap = Object.freeze({ status: client.status, error: client.lastError, views });
  statusMemo.set(t, { version: t.version, snap });
  return snap;
}

/**
 * Calls `fn` after `clientStatus(client)` may have changed: the connection
 * status, or a view opening, closing, or changing status or error. Calls
 * come in a microtask, once per burst of changes (a view may open while a
 * component renders, and listeners must not run in the middle of that).
 * Returns the stop function.
 */
export function onClientStatus(client: StatusSource, fn: () => void): () => void {
  const views = trackedBy(client.cache);
  let queued = false;
  let stopped = false;
  const ping = () => {
    if (queued) return;
    queued = true;
    queueMicrotask(() => {
      queued = false;
      if (!stopped) fn();
    });
  };
  views.listeners.add(ping);
  const off = client.onStatus(ping);
  return () => {
    stopped = true;
    views.listeners.delete(ping);
    off();
  };
}

const NO_EDGES: WindowEdgesState = Object.freeze({ hasBefore: false, hasAfter: false });

/** Keeps a row's wire fields in step with a patch (they name cursors). */
function patchWire(wire: Map<string, Readonly<Record<string, Value>>>, p: RowPatch): void {
  const k = rowKey(p.table, p.id);
  const f = wire.get(k);
  if (!f) return;
  const next: Record<string, Value> = { ...f };
  for (const o of p.ops) {
    const field = unescapeField(o.path);
    if (o.op === PatchOp.REMOVE || !o.value) delete next[field];
    else next[field] = o.value;
  }
  wire.set(k, next);
}

/**
 * @internal Resolves with the first state from `subscribe` that `pred`
 * accepts (the current one included); rejects when the state turns `error`
 * or `closed` first, or after `timeoutMs`.
 */
export function until<S extends { status: ViewStatus; error: ArcanaError | undefined }>(
  subscribe: (fn: (s: S) => void) => () => void,
  pred: (s: S) => boolean,
  what: string,
  timeoutMs?: number,
): Promise<S> {
  return new Promise((resolve, reject) => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    let settled = false;
    let off: (() => void) | undefined;
    const settle = (done: () => void) => {
      settled = true;
      off?.();
      if (timer) clearTimeout(timer);
      done();
    };
    // subscribe calls back at once with the current state.
    off = subscribe((s) => {
      if (settled) return;
      if (pred(s)) settle(() => resolve(s));
      else if (s.status === "error") settle(() => reject(s.error ?? new ArcanaError(2, `${what} failed`)));
      else if (s.status === "closed") settle(() => reject(new ArcanaError(1, `${what} was closed`)));
    });
    if (settled) off();
    else if (timeoutMs !== undefined) {
      timer = setTimeout(() => settle(() => reject(new ArcanaError(4, `${what}: condition not met within ${timeoutMs} ms`))), timeoutMs);
    }
  });
}

/** Adds the cache keys of a ref and its nested refs to `out`. */
export function collectKeys(r: Ref, out: Set<string>): void {
  out.add(rowKey(r.table, r.id));
  for (const n of Object.values(r.nested)) collectKeys(n, out);
}

function index(path: string, len: number, allowEnd: boolean): number | undefined {
  if (!path.startsWith("/")) return undefined;
  const tok = path.slice(1);
  const i = tok === "-" ? len : /^(0|[1-9]\d*)$/.test(tok) ? Number(tok) : NaN;
  if (!Number.isInteger(i) || i > len || (!allowEnd && i === len)) return undefined;
  return i;
}

/** Applies an RFC 6902 patch to a refs array; undefined when it does not fit. */
export function applyRefOps(
  refs: readonly Ref[],
  ops: readonly { op: PatchOp; path: string; from: string; value?: Ref }[],
): Ref[] | undefined {
  const out = refs.slice();
  for (const op of ops) {
    switch (op.op) {
      case PatchOp.ADD: {
        const i = index(op.path, out.length, true);
        if (i === undefined || !op.value) return undefined;
        out.splice(i, 0, op.value);
        break;
      }
      case PatchOp.REMOVE: {
        const i = index(op.path, out.length, false);
        if (i === undefined) return undefined;
        out.splice(i, 1);
        break;
      }
      case PatchOp.REPLACE: {
        const i = index(op.path, out.length, false);
        if (i === undefined || !op.value) return undefined;
        out[i] = op.value;
        break;
      }
      case PatchOp.MOVE: {
        const from = index(op.from, out.length, false);
        if (from === undefined) return undefined;
        const [item] = out.splice(from, 1);
        const to = index(op.path, out.length, true);
        if (to === undefined) return undefined;
        out.splice(to, 0, item!);
        break;
      }
      default:
        return undefined;
    }
  }
  return out;
}

/** Decodes the RFC 6901 field pointer "/a~1b" to "a/b". */
export function unescapeField(path: string): string {
  return path.slice(1).replace(/~1/g, "/").replace(/~0/g, "~");
}

function fieldSteps(p: RowPatch, decode: DecodeOptions): FieldStep[] {
  return p.ops.map((o) => {
    const field = unescapeField(o.path);
    switch (o.op) {
      case PatchOp.REMOVE:
        return { op: "remove", field };
      case PatchOp.ADD:
        return { op: "add", field, value: fromValue(o.value, decode) };
      default:
        return { op: "replace", field, value: fromValue(o.value, decode) };
    }
  });
}
