// The reactive client: views over a shared row cache, kept live across
// reconnects. The jobs behind it live in their own files: connection.ts (the
// session and reconnects), sync.ts (subscribe, Sync, Reanchor), frames.ts
// (frame dispatch), persister.ts (the persist store), registry.ts (view keys).
import { create } from "@bufbuild/protobuf";
import { type Transport, createClient } from "@connectrpc/connect";
import { type Layer, RowCache, rowKey } from "./cache.js";
import { type BackoffOptions, type ClientStatus, Connection } from "./connection.js";
import { ArcanaError, Code } from "./errors.js";
import { type FrameCounts, FrameDispatcher } from "./frames.js";
import type { DescribeResponse, GraphInfo } from "./gen/arcana/v1/describe_pb.js";
import { ArcanaService } from "./gen/arcana/v1/service_pb.js";
import { type Change, RefSchema } from "./gen/arcana/v1/value_pb.js";
import type { PersistStore } from "./persist.js";
import { Persister } from "./persister.js";
import { ViewRegistry, viewKey } from "./registry.js";
import { type SessionMode, type TokenSource, authHeaders } from "./session.js";
import { ViewSync } from "./sync.js";
import { type DecodeOptions, type FieldValue, type Params, fromFields, toParams } from "./values.js";
import { type Item, LiveView, type ViewHost, type ViewSnapshot } from "./view.js";
import { type WindowOptions, type WindowSpec, windowSpec } from "./window.js";
import { WindowView } from "./window-view.js";

export type { BackoffOptions, ClientStatus, FrameCounts };

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

/** The result of a mutation. */
export interface MutationResult<D = Record<string, FieldValue>> {
  /** The first row the mutation returned, decoded ({} when none). */
  data: D;
  /** The changes the server fed into invalidation. */
  changes: Change[];
}

/**
 * A reactive Arcana client. Views share one normalized row cache; the client
 * opens a session lazily, reconnects with backoff when it drops, and brings
 * every view back with Sync (catch-up diffs or a snapshot).
 */
export class ArcanaClient {
  /** Rows of every open view, by table and id. */
  readonly cache = new RowCache();
  private readonly registry = new ViewRegistry();
  /** The server's registry, fetched once for the windows that need their graph's order. */
  private described: Promise<DescribeResponse> | undefined;
  private readonly host: ViewHost;
  private readonly rpc;
  private readonly conn: Connection;
  private readonly frames: FrameDispatcher;
  private readonly sync: ViewSync;
  private readonly persister: Persister;

  constructor(private readonly opts: ClientOptions) {
    this.rpc = createClient(ArcanaService, opts.transport);
    const views = this.registry.byKey;
    this.frames = new FrameDispatcher(this.registry, (v) => this.sync.resync(v));
    this.persister = new Persister(
      { store: opts.persist, delayMs: opts.persistDelayMs, maxViews: opts.persistMaxViews },
      this.cache,
      this.registry,
    );
    this.conn = new Connection(
      opts,
      {
        frames: (frames, batch) => this.frames.onFrames(frames, batch),
        opened: (s) => void this.sync.restore(s),
        lost: (e) => {
          this.frames.parts.clear();
          for (const v of views.values()) {
            if (v.status === "live" || v.status === "stale") v.setStatus("stale", e);
            else if (v.status === "connecting") v.setStatus("connecting", e);
          }
        },
        retrying: (e) => {
          // Views waiting for data, or showing old data, say why.
          for (const v of views.values()) {
            if (v.status === "connecting" || v.status === "stale") v.setStatus(v.status, e);
          }
        },
        failed: (e) => {
          for (const v of views.values()) {
            if (v.status !== "closed") v.setStatus("error", e);
          }
        },
      },
      this.persister.loaded,
    );
    this.sync = new ViewSync(this.registry, this.conn, this.frames, this.persister);
    this.host = {
      cache: this.cache,
      decode: opts.decode ?? {},
      release: (v) => this.sync.release(v),
      resync: (v) => this.sync.resync(v),
      defer: (v) => this.frames.defer(v),
      committed: (v) => this.persister.markDirty(v),
    };
    this.cache.onChange((keys, source) => {
      for (const v of views.values()) if (v !== source) v.rowsChanged(keys);
    });
  }

  /** The client itself, untyped (see `typed`). */
  get untyped(): ArcanaClient {
    return this;
  }

  /** The connection's state. */
  get status(): ClientStatus {
    return this.conn.status;
  }

  /** The error behind the last failed connection attempt, if any. */
  get lastError(): ArcanaError | undefined {
    return this.conn.error;
  }

  /** The identity and id of the current session, when open. */
  get sessionInfo() {
    return this.conn.session?.info;
  }

  /** How many frames and batch messages this client received, over all its sessions. */
  get received(): FrameCounts {
    return this.frames.received;
  }

  /** Calls `fn` on every status change. */
  onStatus(fn: (s: ClientStatus, error?: ArcanaError) => void): () => void {
    return this.conn.onStatus(fn);
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
    const status = this.conn.status;
    if (status === "closed") throw new ArcanaError(Code.CANCELLED, "the client is closed");
    const key = viewKey(graph, params, window);
    const views = this.registry.byKey;
    let v = views.get(key) as LiveView<T> | undefined;
    if (v && v.status !== "error") {
      v.handles++;
      return v;
    }
    v = new LiveView<T>(graph, { ...params }, key, this.host, window);
    v.handles = 1;
    views.set(key, v);
    this.persister.adopt(v);
    const s = this.conn.session;
    if (status === "failed") {
      v.setStatus("error", this.conn.error);
    } else if (s) {
      void this.sync.subscribe(v, s);
    } else {
      void this.conn.ensure().catch(() => {});
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
    for (const v of this.registry.byKey.values()) v.changed();
  }

  private async runMutation<D>(mutation: string, params: Params): Promise<MutationResult<D>> {
    const p = toParams(params);
    let res;
    if (this.opts.session === "bidi") {
      const s = await this.conn.ensure();
      res = await s.mutate(mutation, p);
    } else {
      const s = this.conn.session;
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
      for (const v of this.registry.withId(id) ?? []) {
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
    if (!this.described) {
      const r = this.describe();
      this.described = r;
      r.catch(() => {
        if (this.described === r) this.described = undefined;
      });
    }
    return (await this.described).graphs.find((g) => g.name === graph);
  }

  /**
   * @internal Moves a windowed view to `window` in place, with Reanchor.
   * "subscribe" when it cannot be moved without moving someone else (other
   * handles share it, or the session holds that window already): the caller
   * then subscribes to the new window instead. Resolves once the view holds
   * the new window.
   */
  moveView(v: LiveView<any>, window: WindowSpec): Promise<"moved" | "subscribe"> {
    return this.sync.move(v, window);
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
    return this.conn.ensure().then(() => undefined);
  }

  /**
   * Drops the current session as if the network had failed; the client
   * reconnects and syncs. Useful to test recovery, or after a network change.
   */
  dropSession(): void {
    this.conn.drop();
  }

  /** After a "failed" status (say, a bad token was replaced): try again. */
  retry(): void {
    this.conn.retry();
  }

  /** Writes pending changes to the persist store now (say, before the page unloads). */
  persistNow(): Promise<void> {
    return this.persister.flush();
  }

  /** Closes every view and the session. */
  close(): void {
    if (this.conn.status === "closed") return;
    this.persister.flushPending();
    this.conn.close(() => {
      for (const v of this.registry.byKey.values()) {
        v.dropRows();
        v.setStatus("closed");
      }
      this.registry.clear();
      this.frames.clear();
    });
  }
}
