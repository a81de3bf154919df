// The reactive client: views over a shared row cache, kept live across reconnects.
import { create } from "@bufbuild/protobuf";
import { type Transport, createClient } from "@connectrpc/connect";
import type { DescribeResponse, GraphInfo } from "./gen/arcana/v1/describe_pb.js";
import type { Change } from "./gen/arcana/v1/value_pb.js";
import {
  ArcanaService,
  type ReanchorResponse,
  type SyncResult,
  SyncMode,
  SyncViewSchema,
} from "./gen/arcana/v1/service_pb.js";
import type { ViewFrame } from "./gen/arcana/v1/view_pb.js";
import { type Fields, type Layer, RowCache, rowKey } from "./cache.js";
import { RefSchema } from "./gen/arcana/v1/value_pb.js";
import type { PersistStore, PersistedView } from "./persist.js";
import { ArcanaError, Code, isRetryable } from "./errors.js";
import { type Session, type SessionMode, type TokenSource, authHeaders, openSession } from "./session.js";
import { type DecodeOptions, type FieldValue, type Params, fromFields, stringifyJson, toParams, toValue } from "./values.js";
import { type Item, LiveView, type SyncInfo, type ViewHost, type ViewSnapshot, collectKeys } from "./view.js";
import { SnapshotParts } from "./parts.js";
import { type WindowOptions, type WindowSpec, toPbWindow, windowKey, windowSpec } from "./window.js";
import { WindowView } from "./window-view.js";

/** Where the client's connection stands. */
export type ClientStatus = "idle" | "connecting" | "open" | "reconnecting" | "failed" | "closed";

export interface BackoffOptions {
  /** First delay, in ms (default 200). */
  initialMs?: number;
  /** Longest delay, in ms (default 10000). */
  maxMs?: number;
  /** Growth per failed attempt (default 2). */
  factor?: number;
}

export interface ClientOptions {
  /** A Connect transport: gRPC (HTTP/2) for "bidi", gRPC or grpc-web for "stream". */
  transport: Transport;
  /** "bidi": one Connect stream; "stream": OpenSession plus unary calls (grpc-web). */
  session: SessionMode;
  /** Bearer token, or a function returning one (called for every connection and call). */
  token?: TokenSource;
  backoff?: BackoffOptions;
  /** Bidi only: app-level ping interval in ms (default 15000; 0 disables). */
  pingIntervalMs?: number;
  /** How values are decoded. */
  decode?: DecodeOptions;
  /**
   * Keeps rows and view positions between page loads: views found there show
   * at once (status `stale`) and Sync catches them up. `IndexedDbStore` in
   * browsers, `MemoryStore` for tests and SSR.
   */
  persist?: PersistStore;
  /** How long changes gather before one write to the persist store, in ms (default 100). */
  persistDelayMs?: number;
  /** Most views kept in the persist store; the least recently saved go first (default 100). */
  persistMaxViews?: number;
}

/** What `mutate` may do besides calling the server. */
export interface MutateOptions {
  /**
   * Changes the cache at once, before the server answers. The change is
   * rolled back if the mutation fails, and gives way to the server's rows once
   * the views reach the versions that include the write.
   */
  optimistic?: (tx: OptimisticTx) => void;
}

/** The local changes an optimistic mutation may make. */
export interface OptimisticTx {
  /** Overlays fields on a row, in every view that shows it. */
  update(table: string, id: string | number | bigint, fields: Record<string, FieldValue>): void;
  /** Hides a row from the top level of every view. */
  remove(table: string, id: string | number | bigint): void;
  /**
   * Shows a row the server has not sent yet in `view` (at `index`, default at
   * the end). Use the id the server will give it if known, or a temporary one.
   */
  insert(view: LiveView<any>, table: string, id: string | number | bigint, fields: Record<string, FieldValue>, index?: number): void;
}

/** Frames this client received, for diagnostics and tests. */
export interface FrameCounts {
  /** Frames, whether they came alone or in a batch. */
  readonly frames: number;
  /** Batch messages (`ServerMessage.frames`) among them. */
  readonly batches: number;
}

/** The result of a mutation. */
export interface MutationResult<D = Record<string, FieldValue>> {
  /** The first row the mutation returned, decoded ({} when none). */
  data: D;
  /** The changes the server fed into invalidation. */
  changes: Change[];
}

/** Frames for view ids not (yet) known are kept this long, for the unary subscribe race. */
const ORPHAN_TTL_MS = 30_000;
const ORPHAN_MAX = 1000;

function viewKey(graph: string, params: Params): string {
  const entries = Object.entries(params)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => [k, describeParam(v)]);
  return `${graph}\u0000${JSON.stringify(entries)}`;
}

/** The key of a windowed view: its graph, params and window. */
function windowViewKey(graph: string, params: Params, w: WindowSpec): string {
  return `${viewKey(graph, params)}\u0000${windowKey(w)}`;
}

function describeParam(v: unknown): string {
  const value = toValue(v as never);
  const k = value.kind;
  switch (k.case) {
    case "int":
    case "bytes":
      return `${k.case}:${String(k.value)}`;
    case "timestamp":
      return `ts:${k.value.seconds}.${k.value.nanos}`;
    case undefined:
      return "none";
    default:
      return `${k.case}:${typeof k.value === "string" ? k.value : stringifyJson(k.value as never)}`;
  }
}

/**
 * A reactive Arcana client. Views share one normalized row cache; the client
 * opens a session lazily, reconnects with backoff when it drops, and brings
 * every view back with Sync (catch-up diffs or a snapshot).
 */
export class ArcanaClient {
  /** Rows of every open view, by table and id. */
  readonly cache = new RowCache();
  private readonly views = new Map<string, LiveView<any>>();
  /** Views by server view id; two param spellings may name one server view. */
  private readonly byId = new Map<string, Set<LiveView<any>>>();
  private orphans: { frame: ViewFrame; at: number }[] = [];
  /** Snapshots arriving in parts, until their last part. */
  private readonly parts = new SnapshotParts();
  /** The registry, fetched once for the windows that need their graph's order. */
  private registry: Promise<DescribeResponse> | undefined;
  private session: Session | undefined;
  private connecting: Promise<Session> | undefined;
  private _status: ClientStatus = "idle";
  private _error: ArcanaError | undefined;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly statusListeners = new Set<(s: ClientStatus, e?: ArcanaError) => void>();
  private readonly host: ViewHost;
  private readonly rpc;
  private generation = 0;
  private frameCount = 0;
  private batchCount = 0;
  /** While frames are being applied: the views whose listeners are still to be told. */
  private deferred: Set<LiveView<any>> | undefined;
  /** Set while the persist store loads; sessions wait for it so Sync can use what it held. */
  private readonly loaded: Promise<void> | undefined;
  private persisted = new Map<string, PersistedView>();
  /** Rows as the persist store holds them (what to write, what to delete). */
  private storedRows = new Map<string, Fields>();
  private dirty = new Set<LiveView<any>>();
  private dropped = new Set<string>();
  private flushTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly opts: ClientOptions) {
    this.rpc = createClient(ArcanaService, opts.transport);
    const decode = opts.decode ?? {};
    this.host = {
      cache: this.cache,
      decode,
      release: (v) => this.release(v),
      resync: (v) => this.resync(v),
      defer: (v) => {
        if (!this.deferred) return false;
        this.deferred.add(v);
        return true;
      },
      committed: (v) => this.markDirty(v),
    };
    if (opts.persist) {
      this.loaded = opts.persist.load().then(
        (state) => this.hydrate(state.views, state.rows),
        () => {}, // an unreadable store is an empty one
      );
    }
    this.cache.onChange((keys, source) => {
      for (const v of this.views.values()) if (v !== source) v.rowsChanged(keys);
    });
  }

  /** The client itself, untyped (see `typed`). */
  get untyped(): ArcanaClient {
    return this;
  }

  /** The connection's state. */
  get status(): ClientStatus {
    return this._status;
  }

  /** The error behind the last failed connection attempt, if any. */
  get lastError(): ArcanaError | undefined {
    return this._error;
  }

  /** The identity and id of the current session, when open. */
  get sessionInfo() {
    return this.session?.info;
  }

  /** How many frames and batch messages this client received, over all its sessions. */
  get received(): FrameCounts {
    return { frames: this.frameCount, batches: this.batchCount };
  }

  /** Calls `fn` on every status change. */
  onStatus(fn: (s: ClientStatus, error?: ArcanaError) => void): () => void {
    this.statusListeners.add(fn);
    return () => this.statusListeners.delete(fn);
  }

  /**
   * A live view of `graph` with `params`. Views with equal graph and params
   * are shared; balance each call with `view.close()`.
   */
  view<T = Item>(graph: string, params: Params = {}): LiveView<T> {
    return this.openView<T>(graph, params, undefined);
  }

  /**
   * A live window over an ordered graph: up to `limit` rows next to a cursor,
   * kept live, that moves with `reanchor`, `loadMore` and `loadPrevious`.
   * Balance each call with `close()`.
   */
  window<T = Item>(graph: string, params: Params = {}, options: WindowOptions = {}): WindowView<T> {
    return new WindowView<T>(this, graph, { ...params }, this.openView<T>(graph, params, windowSpec(options)));
  }

  /** @internal Opens (or shares) the view of a graph, params and window. */
  openView<T>(graph: string, params: Params, window: WindowSpec | undefined): LiveView<T> {
    if (this._status === "closed") throw new ArcanaError(Code.CANCELLED, "the client is closed");
    const key = window ? windowViewKey(graph, params, window) : viewKey(graph, params);
    let v = this.views.get(key) as LiveView<T> | undefined;
    if (v && v.status !== "error") {
      v.handles++;
      return v;
    }
    v = new LiveView<T>(graph, { ...params }, key, this.host, window);
    v.handles = 1;
    this.views.set(key, v);
    this.adopt(v);
    if (this._status === "failed") {
      v.setStatus("error", this._error);
    } else if (this.session) {
      void this.subscribeView(v, this.session);
    } else {
      void this.ensureSession().catch(() => {});
    }
    return v;
  }

  /**
   * Runs a mutation. Either way the promise resolves once this client's views
   * show the write: a bidi session carries the mutation itself, ahead of its
   * reply; with a stream session the unary call names the session and the
   * response lists the view versions to wait for.
   */
  async mutate<D = Record<string, FieldValue>>(
    mutation: string,
    params: Params = {},
    options: MutateOptions = {},
  ): Promise<MutationResult<D>> {
    const layer = options.optimistic ? this.applyOptimistic(options.optimistic) : undefined;
    try {
      return await this.runMutation<D>(mutation, params);
    } finally {
      // Failed: roll back. Succeeded: the views show the server's rows by now.
      if (layer) this.dropLayer(layer);
    }
  }

  private applyOptimistic(fn: (tx: OptimisticTx) => void): Layer {
    const layer: Layer = { rows: new Map(), removed: new Set(), inserts: [] };
    const key = (table: string, id: string | number | bigint) => rowKey(table, String(id));
    const overlay = (k: string, fields: Record<string, FieldValue>) =>
      layer.rows.set(k, { ...(layer.rows.get(k) ?? {}), ...fields });
    fn({
      update: (table, id, fields) => overlay(key(table, id), fields),
      remove: (table, id) => void layer.removed.add(key(table, id)),
      insert: (view, table, id, fields, index) => {
        overlay(key(table, id), fields);
        layer.inserts.push({ view, ref: create(RefSchema, { table, id: String(id) }), index });
      },
    });
    this.cache.addLayer(layer);
    this.refreshAll();
    return layer;
  }

  private dropLayer(layer: Layer): void {
    if (this.cache.removeLayer(layer)) this.refreshAll();
  }

  /** Re-renders every view (after an optimistic layer came or went). */
  private refreshAll(): void {
    for (const v of this.views.values()) v.changed();
  }

  private async runMutation<D>(mutation: string, params: Params): Promise<MutationResult<D>> {
    const p = toParams(params);
    let res;
    if (this.opts.session === "bidi") {
      const s = await this.ensureSession();
      res = await s.mutate(mutation, p);
    } else {
      const s = this.session;
      try {
        res = s
          ? await s.mutate(mutation, p)
          : await this.rpc.mutate({ mutation, params: p }, { headers: await authHeaders(this.opts.token) });
      } catch (err) {
        throw ArcanaError.from(err);
      }
      // Frames travel on the session stream, the response on its own request:
      // wait until our views show the write before resolving.
      await this.caughtUp(res.viewVersions);
    }
    return { data: fromFields(res.data, this.opts.decode) as D, changes: res.changes };
  }

  /** Resolves once every listed view reached its version (or moved to a new epoch, or closed). */
  private async caughtUp(versions: { [viewId: string]: bigint }): Promise<void> {
    const waits: Promise<unknown>[] = [];
    for (const [id, version] of Object.entries(versions)) {
      for (const v of this.byId.get(id) ?? []) {
        let epoch: bigint | undefined | null = null;
        const reached = (snap: ViewSnapshot<unknown>) => {
          if (epoch === null) epoch = snap.epoch;
          return snap.version >= version || snap.epoch !== epoch;
        };
        waits.push(v.until(reached, 10_000).catch(() => undefined));
      }
    }
    await Promise.all(waits);
  }

  /**
   * @internal The registry entry of a graph, from one Describe per client
   * (fetched again after a failure).
   */
  async graphInfo(graph: string): Promise<GraphInfo | undefined> {
    if (!this.registry) {
      const r = this.describe();
      this.registry = r;
      r.catch(() => {
        if (this.registry === r) this.registry = undefined;
      });
    }
    return (await this.registry).graphs.find((g) => g.name === graph);
  }

  /**
   * @internal Moves a windowed view to `window` in place, with Reanchor.
   * "subscribe" when it cannot be moved without moving someone else (other
   * handles share it, or the session holds that window already): the caller
   * then subscribes to the new window instead. Resolves once the view holds
   * the new window.
   */
  async moveView(v: LiveView<any>, window: WindowSpec): Promise<"moved" | "subscribe"> {
    const key = windowViewKey(v.graph, v.params, window);
    const peers = v.id ? this.byId.get(v.id) : undefined;
    if (!toPbWindow(window)) return "subscribe"; // the default window is subscribed to, not moved to
    if (v.handles > 1 || (peers && peers.size > 1) || this.views.has(key)) return "subscribe";
    if (!v.id || v.epoch === undefined || v.moving || v.status === "closed" || v.status === "error") {
      return "subscribe";
    }
    const s = await this.ensureSession();
    // The view may have closed or gained a sharer while the session opened.
    if ((v.status as string) === "closed" || !v.id || v.handles > 1 || this.views.has(key)) return "subscribe";
    const from = v.key;
    v.moving = { window };
    const moved = v.until(() => v.moving === undefined);
    moved.catch(() => {});
    this.rekey(v, key);
    let r: ReanchorResponse;
    try {
      r = await s.reanchor(v.id, toPbWindow(window)!);
    } catch (err) {
      const e = ArcanaError.from(err);
      if (e.code === Code.UNAVAILABLE || this.session !== s) {
        // Unknown whether the server moved it: a Sync (now, or on the next
        // session) asks for the new window outright.
        if (this.session === s) this.resync(v);
        await moved;
        return "moved";
      }
      if (v.moving?.window === window) {
        v.moving = undefined;
        if (this.views.get(key) === v && !this.views.has(from)) this.rekey(v, from);
        v.changed(); // what was held back while the reply was awaited
      }
      if (e.code === Code.ALREADY_EXISTS) return "subscribe";
      throw e;
    }
    v.reanchored(r.epoch, r.version);
    await moved;
    return "moved";
  }

  /** Files a view under a new key (its window moved). */
  private rekey(v: LiveView<any>, key: string): void {
    if (this.views.get(v.key) === v) this.views.delete(v.key);
    this.forget(v.key);
    v.key = key;
    this.views.set(key, v);
    this.markDirty(v);
  }

  /** The server's registry: graphs, mutations and tables. */
  async describe(): Promise<DescribeResponse> {
    try {
      return await this.rpc.describe({}, { headers: await authHeaders(this.opts.token) });
    } catch (err) {
      throw ArcanaError.from(err);
    }
  }

  /**
   * Reports data changes written outside Arcana (needs the `arcana:notify`
   * permission). No id means any row of the table; no columns, any column.
   */
  async notify(changes: { table: string; id?: string; columns?: string[] }[]): Promise<void> {
    try {
      await this.rpc.notify(
        { changes: changes.map((c) => ({ table: c.table, id: c.id ?? "", columns: c.columns ?? [] })) },
        { headers: await authHeaders(this.opts.token) },
      );
    } catch (err) {
      throw ArcanaError.from(err);
    }
  }

  /** Opens the session now (it otherwise opens with the first view or mutation). */
  connect(): Promise<void> {
    return this.ensureSession().then(() => undefined);
  }

  /**
   * Drops the current session as if the network had failed; the client
   * reconnects and syncs. Useful to test recovery, or after a network change.
   */
  dropSession(): void {
    const s = this.session;
    if (!s) return;
    s.close();
    this.sessionLost(s, new ArcanaError(Code.UNAVAILABLE, "session dropped by the client"));
  }

  /** After a "failed" status (say, a bad token was replaced): try again. */
  retry(): void {
    if (this._status !== "failed") return;
    this._error = undefined;
    this.setStatus("idle");
    this.attempt = 0;
    void this.ensureSession().catch(() => {});
  }

  /** Closes every view and the session. */
  close(): void {
    if (this._status === "closed") return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.flushTimer) void this.flush();
    this.generation++;
    const s = this.session;
    this.session = undefined;
    s?.close();
    for (const v of this.views.values()) {
      v.dropRows();
      v.setStatus("closed");
    }
    this.views.clear();
    this.byId.clear();
    this.orphans = [];
    this.parts.clear();
    this.setStatus("closed");
  }

  // ---- sessions -------------------------------------------------------------

  private setStatus(s: ClientStatus, error?: ArcanaError): void {
    if (s === this._status) return;
    this._status = s;
    for (const fn of [...this.statusListeners]) fn(s, error);
  }

  private ensureSession(): Promise<Session> {
    if (this.session) return Promise.resolve(this.session);
    if (this._status === "closed") return Promise.reject(new ArcanaError(Code.CANCELLED, "the client is closed"));
    if (this._status === "failed") return Promise.reject(this._error);
    if (!this.connecting) {
      const start = this.loaded ? this.loaded.then(() => this.openNow()) : this.openNow();
      this.connecting = start.finally(() => (this.connecting = undefined));
    }
    return this.connecting;
  }

  private async openNow(): Promise<Session> {
    if (this.retryTimer) {
      clearTimeout(this.retryTimer);
      this.retryTimer = undefined;
    }
    const gen = this.generation;
    this.setStatus(this.attempt === 0 && this._status === "idle" ? "connecting" : "reconnecting");
    let s: Session;
    try {
      s = await openSession(
        this.opts.session,
        { transport: this.opts.transport, token: this.opts.token, pingIntervalMs: this.opts.pingIntervalMs },
        {
          onFrames: (frames, batch) => {
            if (this.session === s) this.onFrames(frames, batch);
          },
          onClose: (e) => this.sessionLost(s, e),
        },
      );
    } catch (err) {
      const e = ArcanaError.from(err);
      this._error = e;
      if (gen !== this.generation) throw e;
      if (isRetryable(e)) {
        // Views waiting for data, or showing old data, say why.
        for (const v of this.views.values()) {
          if (v.status === "connecting" || v.status === "stale") v.setStatus(v.status, e);
        }
        this.scheduleRetry();
      } else this.fail(e);
      throw e;
    }
    if (gen !== this.generation || this._status === "closed") {
      s.close();
      throw new ArcanaError(Code.CANCELLED, "the client is closed");
    }
    this.session = s;
    this.attempt = 0;
    this._error = undefined;
    this.setStatus("open");
    void this.restore(s);
    return s;
  }

  private fail(e: ArcanaError): void {
    this.setStatus("failed", e);
    for (const v of this.views.values()) {
      if (v.status !== "closed") v.setStatus("error", e);
    }
  }

  private scheduleRetry(): void {
    if (this.retryTimer || this._status === "closed") return;
    const b = this.opts.backoff ?? {};
    const base = Math.min(b.maxMs ?? 10_000, (b.initialMs ?? 200) * (b.factor ?? 2) ** this.attempt);
    const delay = base / 2 + (Math.random() * base) / 2;
    this.attempt++;
    this.setStatus("reconnecting", this._error);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (this.session || this._status === "closed") return;
      void this.ensureSession().catch(() => {});
    }, delay);
  }

  private sessionLost(s: Session, e: ArcanaError): void {
    if (this.session !== s) return;
    this.session = undefined;
    this.parts.clear();
    this._error = e;
    for (const v of this.views.values()) {
      if (v.status === "live" || v.status === "stale") v.setStatus("stale", e);
      else if (v.status === "connecting") v.setStatus("connecting", e);
    }
    if (isRetryable(e)) this.scheduleRetry();
    else this.fail(e);
  }

  /** On a new session: Sync the views that had state, subscribe the others. */
  private async restore(s: Session): Promise<void> {
    const held: LiveView<any>[] = [];
    const fresh: LiveView<any>[] = [];
    for (const v of this.views.values()) {
      if (v.status === "closed" || v.status === "error") continue;
      if (v.epoch !== undefined && v.id) held.push(v);
      else fresh.push(v);
    }
    for (const v of fresh) void this.subscribeView(v, s);
    if (held.length === 0) return;
    for (const v of held) v.resyncing = true;
    try {
      const res = await s.sync(held.map((v) => this.syncView(v)));
      res.results.forEach((r, i) => this.onSyncResult(held[i]!, r));
    } catch (err) {
      // The session failed meanwhile; the next one retries.
      for (const v of held) v.resyncing = false;
      if (this.session === s) this.dropSession();
      void err;
    }
  }

  private syncView(v: LiveView<any>) {
    const m = v.moving;
    // Mid re-anchor the client holds neither window for sure: ask for the
    // new one from scratch (no epoch means a snapshot).
    if (m) m.bySnapshot = true;
    const w = m?.window ?? v.window;
    return create(SyncViewSchema, {
      graph: v.graph,
      params: toParams(v.params),
      epoch: m ? 0n : (v.epoch ?? 0n),
      version: m ? 0n : v.version,
      window: w && toPbWindow(w),
    });
  }

  private onSyncResult(v: LiveView<any>, r: SyncResult): void {
    v.resyncing = false;
    if (v.status === "closed") {
      // Closed while the sync was in flight: let the server know, unless a twin holds it.
      const s = this.session;
      if (r.viewId && !this.byId.has(r.viewId) && s) void s.unsubscribe(r.viewId).catch(() => {});
      return;
    }
    if (r.error) {
      this.failView(v, new ArcanaError(r.error.code, r.error.message));
      return;
    }
    const mode = r.mode === SyncMode.CATCH_UP ? "catch_up" : r.mode === SyncMode.SNAPSHOT ? "snapshot" : "current";
    const info: SyncInfo = { mode, epoch: r.epoch, version: r.version, frames: r.frames };
    v.lastSync = info;
    if (r.viewId && r.viewId !== v.id) this.bind(v, r.viewId);
    this.drainOrphans(v);
    // Caught up already (frames came first, or nothing was missed)? Then live;
    // otherwise the frames still on their way make it live.
    if (v.epoch === r.epoch && v.version >= r.version && (v.status === "stale" || v.status === "connecting")) {
      v.setStatus("live");
    } else {
      v.changed();
    }
  }

  private async subscribeView(v: LiveView<any>, s: Session, retried = false): Promise<void> {
    try {
      const r = await s.subscribe(v.graph, toParams(v.params), v.window && toPbWindow(v.window));
      if (v.status === "closed") {
        if (!this.byId.has(r.viewId)) void s.unsubscribe(r.viewId).catch(() => {});
        return;
      }
      this.bind(v, r.viewId);
      this.drainOrphans(v);
      // Another view already held this server view and may have taken the
      // snapshot meant for this one: ask for a fresh one.
      const peers = this.byId.get(r.viewId);
      if (v.epoch === undefined && peers && [...peers].some((p) => p !== v && p.epoch !== undefined)) {
        this.resync(v);
      }
    } catch (err) {
      const e = ArcanaError.from(err);
      if (this.session !== s || e.code === Code.UNAVAILABLE || e.code === Code.CANCELLED) {
        return; // the session is gone: the next one subscribes again
      }
      // The session keeps a window's view id for the subscription that was
      // re-anchored away from it: give that one an id of its own, then retry.
      const mover = e.code === Code.ALREADY_EXISTS && !retried ? this.movedFrom(v) : undefined;
      if (mover && v.status !== "closed") {
        try {
          await this.relocate(mover, s);
          return await this.subscribeView(v, s, true);
        } catch {
          // fall through: report the first error
        }
      }
      this.failView(v, e);
    }
  }

  /** The view of this client that was re-anchored in place away from `v`'s window. */
  private movedFrom(v: LiveView<any>): LiveView<any> | undefined {
    if (!v.window) return undefined;
    for (const l of this.views.values()) {
      if (l !== v && l.id && l.origin === v.key && l.key !== v.key && !l.moving) return l;
    }
    return undefined;
  }

  /**
   * Moves a re-anchored view onto a subscription under its own window's id,
   * which frees the id of the window it left. It keeps showing its rows
   * meanwhile; the snapshot of the new subscription brings it up to date.
   */
  private async relocate(l: LiveView<any>, s: Session): Promise<void> {
    const old = l.id!;
    this.unbind(l);
    l.id = undefined;
    await s.unsubscribe(old).catch(() => {});
    const r = await s.subscribe(l.graph, toParams(l.params), l.window && toPbWindow(l.window));
    if (l.status === "closed") {
      if (!this.byId.has(r.viewId)) void s.unsubscribe(r.viewId).catch(() => {});
      return;
    }
    this.bind(l, r.viewId);
    this.drainOrphans(l);
  }

  private bind(v: LiveView<any>, id: string): void {
    if (v.id === id) return;
    this.unbind(v);
    v.id = id;
    // The server named this id after the window the view holds now.
    v.origin = v.key;
    let set = this.byId.get(id);
    if (!set) this.byId.set(id, (set = new Set()));
    set.add(v);
  }

  /** Forgets a view's id; true when no other view uses it any more. */
  private unbind(v: LiveView<any>): boolean {
    if (!v.id) return false;
    const set = this.byId.get(v.id);
    if (!set || !set.delete(v)) return false;
    if (set.size > 0) return false;
    this.byId.delete(v.id);
    return true;
  }

  private failView(v: LiveView<any>, e: ArcanaError): void {
    this.unbind(v);
    this.views.delete(v.key);
    v.dropRows();
    v.setStatus("error", e);
    this.forget(v.key);
  }

  private release(v: LiveView<any>): void {
    v.handles--;
    if (v.handles > 0) return;
    if (this.views.get(v.key) === v) this.views.delete(v.key);
    if (v.id && this.unbind(v)) {
      const s = this.session;
      if (s) void s.unsubscribe(v.id).catch(() => {});
    }
    v.dropRows();
    v.setStatus("closed");
  }

  /** Brings a view that missed frames back in line, on the same session. */
  private resync(v: LiveView<any>): void {
    const s = this.session;
    if (!s || v.resyncing) return;
    v.resyncing = true;
    s.sync([this.syncView(v)]).then(
      (res) => {
        const r = res.results[0];
        if (r) this.onSyncResult(v, r);
        else v.resyncing = false;
      },
      () => {
        v.resyncing = false;
      },
    );
  }

  // ---- persistence ----------------------------------------------------------

  /** Takes what the persist store held; views opened meanwhile show it at once. */
  private hydrate(views: PersistedView[], rows: [string, Fields][]): void {
    this.storedRows = new Map(rows);
    for (const p of views) this.persisted.set(p.key, p);
    for (const v of this.views.values()) this.adopt(v);
  }

  /** Shows a new view's persisted state, if there is one. */
  private adopt(v: LiveView<any>): void {
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
    this.bind(v, p.id);
    v.hydrate(p);
  }

  private markDirty(v: LiveView<any>): void {
    if (!this.opts.persist) return;
    this.dirty.add(v);
    this.scheduleFlush();
  }

  private forget(key: string): void {
    if (!this.opts.persist || !this.persisted.delete(key)) return;
    this.dropped.add(key);
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushTimer) return;
    this.flushTimer = setTimeout(() => void this.flush(), this.opts.persistDelayMs ?? 100);
  }

  /** Writes the changed views and their rows; drops rows no persisted view reaches. */
  private async flush(): Promise<void> {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    const store = this.opts.persist;
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
    const max = this.opts.persistMaxViews ?? 100;
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

  /** Writes pending changes to the persist store now (say, before the page unloads). */
  persistNow(): Promise<void> {
    return this.flush();
  }

  // ---- frames ---------------------------------------------------------------

  /**
   * Applies frames in order, each as if it had come alone. Listeners are told
   * once all of them are applied: a view's listeners see each batch as one
   * change, and every view is consistent with the others when they do.
   */
  private onFrames(frames: readonly ViewFrame[], batch: boolean): void {
    this.frameCount += frames.length;
    if (batch) this.batchCount++;
    const outer = this.deferred === undefined;
    if (outer) this.deferred = new Set();
    try {
      for (const f of frames) this.onFrame(f);
    } finally {
      if (outer) {
        const views = this.deferred!;
        this.deferred = undefined;
        for (const v of views) v.changed();
      }
    }
  }

  private onFrame(part: ViewFrame): void {
    const f = this.parts.push(part);
    if (!f) return; // a snapshot part: the view shows it once the last is in
    const views = this.byId.get(f.viewId);
    if (!views) {
      const now = Date.now();
      this.orphans = this.orphans.filter((o) => now - o.at < ORPHAN_TTL_MS);
      if (this.orphans.length >= ORPHAN_MAX) this.orphans.shift();
      this.orphans.push({ frame: f, at: now });
      return;
    }
    for (const v of [...views]) this.applyFrame(v, f);
  }

  private applyFrame(v: LiveView<any>, f: ViewFrame): void {
    const r = v.apply(f);
    if (r === "gap" && !v.resyncing) this.resync(v);
  }

  private drainOrphans(v: LiveView<any>): void {
    if (!v.id || this.orphans.length === 0) return;
    const mine = this.orphans.filter((o) => o.frame.viewId === v.id);
    if (mine.length === 0) return;
    this.orphans = this.orphans.filter((o) => o.frame.viewId !== v.id);
    for (const o of mine) this.applyFrame(v, o.frame);
  }
}
