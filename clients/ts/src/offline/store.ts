// An offline store: a local copy of the synced tables that the app reads and
// writes without a connection, and a loop that pushes the outbox and pulls
// everyone else's changes whenever the server can be reached.
import { type DescMethodServerStreaming, create } from "@bufbuild/protobuf";
import { type Client, type Transport, createClient } from "@connectrpc/connect";
import {
  type CapabilitiesResponse,
  IntentOp,
  OfflineService,
  type PushChunk,
  PushChunkSchema,
  type PushResponse,
  type ServerRow,
} from "../gen/arcana/v1/offline_pb.js";
import type { BackoffOptions } from "../client.js";
import { ArcanaError, Code, isRetryable } from "../errors.js";
import { type TokenSource, authHeaders } from "../session.js";
import type { Value } from "../gen/arcana/v1/value_pb.js";
import { type DecodeOptions, type FieldValue, type Params, fromFields } from "../values.js";
import { type BundleLimits, type Conflict, LocalState, META, type Resolution, formatScopes, opName } from "./state.js";
import { type OfflineStorage, type OutboxEntry, type StorageBatch, emptyBatch } from "./storage.js";
import { encodeRow } from "./values.js";

/** RegisterClient refused this app version: the app must be updated before it can sync. */
export class UpgradeRequiredError extends ArcanaError {
  /** The lowest app version the server accepts ("" when it did not say). */
  readonly minAppVersion: string;

  constructor(message: string, minAppVersion: string, options?: { cause?: unknown }) {
    super(Code.FAILED_PRECONDITION, message, options);
    this.minAppVersion = minAppVersion;
  }
}

/** Where the sync loop stands. */
export type OfflineStatus = "idle" | "connecting" | "live" | "offline" | "failed" | "closed";

/** A row as the app sees it: the server's row with this device's pending writes on top. */
export interface OfflineRow {
  id: string;
  values: Record<string, FieldValue>;
  /** The server version the row is based on (0 for a row only inserted here). */
  version: bigint;
  scope: string;
  /** True while local writes of this row wait for the server. */
  pending: boolean;
}

/** A local write the server refused. */
export interface RefusedWrite {
  table: string;
  id: string;
  op: "insert" | "update" | "delete";
  values: Record<string, Value>;
}

export interface OfflineStoreOptions {
  transport: Transport;
  storage: OfflineStorage;
  token?: TokenSource;
  /** Semantic version of the app, checked by RegisterClient. */
  appVersion?: string;
  platform?: string;
  /** A fixed client id; by default one is made at first open and kept in the storage. */
  clientId?: string;
  /**
   * Called for every local write the server refused ("reject") or overruled
   * ("superseded"). For a rejected write, returning "reapply" writes it
   * again on top of the server's row; anything else drops it.
   */
  onConflict?: (c: Conflict) => Resolution | void | Promise<Resolution | void>;
  /**
   * Called when the server refused a whole bundle as invalid
   * (INVALID_ARGUMENT, e.g. a value a column cannot take): its writes are
   * dropped from the outbox so later writes can go.
   */
  onRefused?: (r: { bundleId: bigint; writes: RefusedWrite[]; error: ArcanaError }) => void;
  /** Called with the server's answer to every pushed bundle. */
  onBundle?: (b: { bundleId: bigint; applied: boolean; replayed: boolean; writes: number }) => void;
  /** Called after a snapshot replaced the rows of these scopes (empty: every scope). */
  onSnapshot?: (scopes: string[]) => void;
  /** Called when a sync attempt fails (the loop retries retryable failures). */
  onError?: (e: ArcanaError) => void;
  backoff?: BackoffOptions;
  /**
   * Whether the transport can stream requests (gRPC over HTTP/2 can; grpc-web
   * in browsers cannot). Without it every bundle is one chunk. Default true.
   */
  clientStreaming?: boolean;
  decode?: DecodeOptions;
}

const DEFAULT_CHUNK_ROWS = 500;
const DEFAULT_PUSH_ROWS = 1000;
const DEFAULT_PUSH_BYTES = 4 << 20;
// Room for the chunk's own fields when cutting a bundle by bytes.
const CHUNK_OVERHEAD = 256;

export class OfflineStore {
  private readonly opts: OfflineStoreOptions;
  private readonly rpc: Client<typeof OfflineService>;
  private readonly state: LocalState;
  private readonly listeners = new Set<() => void>();
  private queue: Promise<unknown> = Promise.resolve();
  private caps?: CapabilitiesResponse;
  private pushing?: Promise<void>;
  private running = false;
  private loop?: Promise<void>;
  private abort?: AbortController;
  private stopper?: AbortController;
  private _status: OfflineStatus = "idle";
  private _error?: ArcanaError;

  private constructor(opts: OfflineStoreOptions, state: LocalState) {
    this.opts = opts;
    this.state = state;
    this.rpc = createClient(OfflineService, opts.transport);
  }

  /** Opens the storage and loads it; touches no network. */
  static async open(opts: OfflineStoreOptions): Promise<OfflineStore> {
    const store = new OfflineStore(opts, new LocalState(await opts.storage.load()));
    const id = opts.clientId ?? store.state.meta.get(META.clientId) ?? newClientId();
    if (store.state.meta.get(META.clientId) !== id) {
      await store.commit(() => ({ meta: new Map([[META.clientId, id]]) }));
    }
    return store;
  }

  /** The id this device registers with, stable across restarts. */
  get clientId(): string {
    return this.state.meta.get(META.clientId)!;
  }

  get status(): OfflineStatus {
    return this._status;
  }

  /** The last failure of the sync loop, if any. */
  get error(): ArcanaError | undefined {
    return this._error;
  }

  /** Names of the synced tables (known after the first connection). */
  tables(): string[] {
    return [...this.state.specs.keys()];
  }

  /** The newest sequence received per scope. */
  positions(): Map<string, bigint> {
    return this.state.scopes();
  }

  /** How many local writes wait for the server. */
  pendingCount(): number {
    return this.state.outbox.length;
  }

  /** Every row of a table. */
  rows(table: string): OfflineRow[] {
    this.state.spec(table);
    return this.state.visibleRows(table).map((r) => ({ ...r, values: fromFields(r.values, this.opts.decode) }));
  }

  /** One row by id, or undefined. */
  get(table: string, id: string): OfflineRow | undefined {
    return this.rows(table).find((r) => r.id === id);
  }

  /** Calls `fn` after every change of the rows, the outbox or the status. */
  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Inserts a row locally; resolves with its id once the write is stored. */
  async insert(table: string, values: Params): Promise<string> {
    return this.write(table, IntentOp.INSERT, encodeRow(this.state.spec(table), values));
  }

  /** Changes columns of a row (given by id or by its key values). */
  async update(table: string, key: string | Params, values: Params): Promise<void> {
    const spec = this.state.spec(table);
    await this.write(table, IntentOp.UPDATE, { ...this.keyValues(table, key), ...encodeRow(spec, values) });
  }

  /** Deletes a row (given by id or by its key values). */
  async delete(table: string, key: string | Params): Promise<void> {
    await this.write(table, IntentOp.DELETE, this.keyValues(table, key));
  }

  /** Forgets every pending write (say, after the app handled a loop that stopped as `failed`). */
  async dropPending(): Promise<number> {
    let n = 0;
    await this.commit(() => {
      n = this.state.outbox.length;
      return { deleteOutbox: this.state.outbox.map((e) => e.seq) };
    });
    return n;
  }

  /**
   * One full round: connect, push every pending write, pull until caught up.
   * Rejects when the server cannot be reached.
   */
  async sync(): Promise<void> {
    await this.connect();
    await this.pushAll();
    await this.pull(false);
  }

  /** Runs the sync loop in the background: push on every write, follow changes live, retry with backoff. */
  start(): void {
    if (this.running || this._status === "closed") return;
    this.running = true;
    this.stopper = new AbortController();
    this.loop = this.run(this.stopper.signal);
  }

  /** Stops the background loop (the store stays usable offline). */
  async stop(): Promise<void> {
    this.running = false;
    this.stopper?.abort();
    this.abort?.abort();
    await this.loop;
    this.loop = undefined;
    if (this._status !== "closed" && this._status !== "failed") this.setStatus("idle");
  }

  /** Stops syncing and closes the storage. */
  async close(): Promise<void> {
    await this.stop();
    await this.pushing?.catch(() => {});
    await this.queue.catch(() => {});
    this.setStatus("closed");
    await this.opts.storage.close();
  }

  private keyValues(table: string, key: string | Params) {
    const spec = this.state.spec(table);
    if (typeof key !== "string") {
      const enc = encodeRow(spec, key);
      return Object.fromEntries(spec.key.map((k) => [k, enc[k]!]));
    }
    const row = this.state.visible(table, key);
    if (!row) throw new ArcanaError(Code.NOT_FOUND, `${table} ${key} does not exist`);
    return Object.fromEntries(spec.key.map((k) => [k, row[k]!]));
  }

  private async write(table: string, op: IntentOp, values: Record<string, Value>): Promise<string> {
    let id = "";
    await this.commit(() => {
      const w = this.state.write(table, op, values, BigInt(Date.now()));
      id = w.id;
      return w.batch;
    });
    if (this._status === "live") this.kick();
    return id;
  }

  /** Commits a batch computed from the latest state, then applies it in memory. */
  private commit(make: () => StorageBatch | undefined): Promise<void> {
    const run = this.queue.then(async () => {
      const b = make();
      if (!b || emptyBatch(b)) return;
      await this.opts.storage.commit(b);
      this.state.apply(b);
      this.emit();
    });
    this.queue = run.catch(() => {});
    return run;
  }

  private emit(): void {
    for (const fn of this.listeners) {
      try {
        fn();
      } catch {
        // A listener's failure is its own.
      }
    }
  }

  private setStatus(s: OfflineStatus, e?: ArcanaError): void {
    if (e) this._error = e;
    if (this._status === s) return;
    this._status = s;
    this.emit();
  }

  private async headers(): Promise<Record<string, string>> {
    return authHeaders(this.opts.token);
  }

  /** Capabilities, local tables, registration, and a snapshot of scopes not held yet. */
  private async connect(signal?: AbortSignal): Promise<void> {
    const headers = await this.headers();
    let caps: CapabilitiesResponse;
    try {
      caps = await this.rpc.capabilities({}, { headers, signal });
    } catch (e) {
      throw ArcanaError.from(e);
    }
    this.caps = caps;
    if (this.state.meta.get(META.schemaHash) !== caps.schemaHash) {
      // New or changed tables: the old rows may not fit them, so start over
      // from a snapshot. Pending writes stay and go out on the new schema.
      await this.commit(() => ({
        tables: caps.tables,
        clearRows: true,
        meta: new Map([
          [META.schemaHash, caps.schemaHash],
          [META.scopes, formatScopes(new Map())],
        ]),
      }));
    }
    let reg;
    try {
      reg = await this.rpc.registerClient(
        { clientId: this.clientId, platform: this.opts.platform ?? "", appVersion: this.opts.appVersion ?? "" },
        { headers, signal },
      );
    } catch (e) {
      const err = ArcanaError.from(e);
      if (err.code === Code.FAILED_PRECONDITION) {
        throw new UpgradeRequiredError(err.rawMessage, caps.minAppVersion, { cause: err });
      }
      throw err;
    }
    const held = this.state.scopes();
    if (held.size === 0) {
      await this.snapshot([], signal);
    } else {
      const missing = reg.scopes.map((s) => s.scope).filter((s) => !held.has(s));
      if (missing.length) await this.snapshot(missing, signal);
    }
  }

  /** Takes a snapshot of scopes (all when empty) and replaces their rows; resumes by cursor after a dropped stream. */
  private async snapshot(scopes: string[], signal?: AbortSignal): Promise<void> {
    const rows: ServerRow[] = [];
    let cursor = "";
    let at: { scope: string; sequence: bigint }[] = [];
    for (let attempt = 0; ; attempt++) {
      try {
        for await (const chunk of this.rpc.snapshot(
          { clientId: this.clientId, scopes, cursor },
          { headers: await this.headers(), signal },
        )) {
          rows.push(...chunk.rows);
          if (chunk.at.length) at = chunk.at.map((a) => ({ scope: a.scope, sequence: a.sequence }));
          cursor = chunk.cursor;
          if (chunk.last) {
            await this.commit(() => this.state.snapshotted(scopes.length === 0, scopes, rows, at));
            this.opts.onSnapshot?.(scopes);
            return;
          }
        }
        throw new ArcanaError(Code.UNAVAILABLE, "the snapshot stream ended before its last chunk");
      } catch (e) {
        const err = ArcanaError.from(e);
        if (!cursor || !isRetryable(err) || attempt >= 3 || signal?.aborted) throw err;
        await sleep(this.delay(attempt), signal);
      }
    }
  }

  /** Pulls until caught up, or (follow) until the stream ends or fails. */
  private async pull(follow: boolean, signal?: AbortSignal): Promise<void> {
    for (;;) {
      const after = [...this.state.scopes()].map(([scope, sequence]) => ({ scope, sequence }));
      let more = false;
      let snapshotOf: string | undefined;
      try {
        for await (const res of this.rpc.pull(
          { clientId: this.clientId, after, follow },
          { headers: await this.headers(), signal },
        )) {
          if (res.kind.case === "snapshotRequired") {
            snapshotOf = res.kind.value.scope;
            break;
          }
          if (res.kind.case === "changes") {
            const cb = res.kind.value;
            await this.commit(() => this.state.pulled(cb));
            more = cb.hasMore;
            if (follow && this._status === "connecting") this.setStatus("live");
          }
        }
      } catch (e) {
        throw ArcanaError.from(e);
      }
      if (snapshotOf !== undefined) {
        await this.snapshot([snapshotOf], signal);
        continue;
      }
      if (follow || !more) return;
    }
  }

  /** Pushes bundles until the outbox is empty. One push runs at a time. */
  private pushAll(): Promise<void> {
    if (!this.pushing) {
      this.pushing = (async () => {
        try {
          for (;;) {
            let b = this.state.sealed();
            if (!b) {
              let sealed: { bundleId: bigint; entries: OutboxEntry[] } | undefined;
              await this.commit(() => {
                const s = this.state.seal(this.bundleLimits());
                sealed = s && { bundleId: s.bundleId, entries: s.entries };
                return s?.batch;
              });
              b = sealed;
            }
            if (!b) return;
            let res: PushResponse;
            try {
              res = await this.send(b.bundleId, b.entries);
            } catch (e) {
              const err = ArcanaError.from(e);
              // The server will refuse these writes however often they go:
              // drop them rather than block every later write behind them.
              if (err.code !== Code.INVALID_ARGUMENT) throw err;
              const dropped = b.entries;
              await this.commit(() => ({ deleteOutbox: dropped.map((e) => e.seq) }));
              this.opts.onRefused?.({
                bundleId: b.bundleId,
                writes: dropped.map((e) => ({ table: e.table, id: e.id, op: opName(e.op), values: e.values })),
                error: err,
              });
              continue;
            }
            this.opts.onBundle?.({ bundleId: b.bundleId, applied: res.applied, replayed: res.replayed, writes: b.entries.length });
            const entries = b.entries;
            let conflicts: Conflict[] = [];
            await this.commit(() => {
              const r = this.state.pushed(entries, res);
              conflicts = r.conflicts;
              return r.batch;
            });
            for (const c of conflicts) await this.resolve(c);
          }
        } finally {
          this.pushing = undefined;
        }
      })();
    }
    return this.pushing;
  }

  private async resolve(c: Conflict): Promise<void> {
    let r: Resolution | void = undefined;
    try {
      r = await this.opts.onConflict?.(c);
    } catch {
      r = undefined;
    }
    if (c.kind === "reject" && r === "reapply") {
      await this.commit(() => this.state.reapply(c, BigInt(Date.now())));
    }
  }

  private bundleLimits(): BundleLimits {
    const l = this.caps?.limits;
    const chunk = l?.maxChunkRows || DEFAULT_CHUNK_ROWS;
    const rows = l?.maxPushRows || DEFAULT_PUSH_ROWS;
    const bytes = (l?.maxPushBytes || DEFAULT_PUSH_BYTES) - CHUNK_OVERHEAD;
    return { rows: this.opts.clientStreaming === false ? Math.min(rows, chunk) : rows, bytes };
  }

  /** Sends one sealed bundle as numbered chunks. */
  private async send(bundleId: bigint, entries: OutboxEntry[]): Promise<PushResponse> {
    const chunkRows = this.caps?.limits?.maxChunkRows || DEFAULT_CHUNK_ROWS;
    const chunks: PushChunk[] = [];
    for (let i = 0; i === 0 || i * chunkRows < entries.length; i++) {
      const part = entries.slice(i * chunkRows, (i + 1) * chunkRows);
      chunks.push(
        create(PushChunkSchema, {
          clientId: this.clientId,
          bundleId,
          chunkIndex: i,
          last: (i + 1) * chunkRows >= entries.length,
          intents: part.map((e) => ({
            table: e.table,
            op: e.op,
            values: e.values,
            baseVersion: e.baseVersion,
            clientTimeUnixMs: e.clientTimeMs,
          })),
        }),
      );
    }
    const headers = await this.headers();
    try {
      if (this.opts.clientStreaming === false) return await this.sendOne(chunks, headers);
      return await this.rpc.push(
        (async function* () {
          yield* chunks;
        })(),
        { headers },
      );
    } catch (e) {
      throw ArcanaError.from(e);
    }
  }

  /**
   * grpc-web cannot stream a request from a browser, but a request of one
   * message is the same on the wire for every call kind: send the one chunk
   * as a server-streaming call and read the single answer.
   */
  private async sendOne(chunks: PushChunk[], headers: Record<string, string>): Promise<PushResponse> {
    if (chunks.length !== 1) {
      throw new ArcanaError(Code.INTERNAL, "a bundle for a non-streaming transport must be one chunk");
    }
    const method = {
      ...OfflineService.method.push,
      methodKind: "server_streaming",
    } as unknown as DescMethodServerStreaming<typeof PushChunkSchema, (typeof OfflineService.method.push)["output"]>;
    const res = await this.opts.transport.stream(
      method,
      undefined,
      undefined,
      headers,
      (async function* () {
        yield chunks[0]!;
      })(),
    );
    for await (const m of res.message) return m as PushResponse;
    throw new ArcanaError(Code.UNAVAILABLE, "Push ended without an answer");
  }

  /** Starts a push in the background; a failure drops the live stream so the loop reconnects. */
  private kick(): void {
    this.pushAll().catch((e) => {
      const err = ArcanaError.from(e);
      this.opts.onError?.(err);
      this._error = err;
      this.abort?.abort();
    });
  }

  private delay(attempt: number): number {
    const b = this.opts.backoff ?? {};
    const base = Math.min(b.maxMs ?? 10_000, (b.initialMs ?? 200) * (b.factor ?? 2) ** attempt);
    return base / 2 + (Math.random() * base) / 2;
  }

  private async run(stopped: AbortSignal): Promise<void> {
    let attempt = 0;
    while (this.running) {
      const ac = new AbortController();
      this.abort = ac;
      try {
        this.setStatus("connecting");
        await this.connect(ac.signal);
        await this.pushAll();
        attempt = 0;
        this.setStatus("live");
        if (this.state.outbox.length) this.kick();
        await this.pull(true, ac.signal);
        // The server ended the stream (shutting down): connect again.
      } catch (e) {
        if (!this.running) break;
        const err = ArcanaError.from(e);
        this.opts.onError?.(err);
        if (err instanceof UpgradeRequiredError || !isRetryable(err)) {
          this.running = false;
          this.setStatus("failed", err);
          break;
        }
        this.setStatus("offline", err);
        await sleep(this.delay(attempt++), stopped);
      } finally {
        ac.abort();
      }
    }
  }
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((res) => {
    const t = setTimeout(res, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(t);
      res();
    });
  });
}

/** A random UUID (v4); `randomUUID` exists only in secure contexts. */
function newClientId(): string {
  const c = globalThis.crypto;
  if (typeof c.randomUUID === "function") return c.randomUUID();
  const b = c.getRandomValues(new Uint8Array(16));
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
