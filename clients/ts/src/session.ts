// Session strategies: one bidirectional Connect stream (Node, HTTP/2), or an
// OpenSession server stream plus unary calls (browsers, grpc-web).
import { type MessageInitShape, create } from "@bufbuild/protobuf";
import { type Client, type Transport, createClient } from "@connectrpc/connect";
import {
  ArcanaService,
  type ClientMessage,
  ClientMessageSchema,
  type MutateResponse,
  type ReanchorResponse,
  type ServerMessage,
  type SessionOpened,
  type SubscribeResponse,
  type SyncResponse,
  type SyncView,
  type Window,
} from "./gen/arcana/v1/service_pb.js";
import type { Value } from "./gen/arcana/v1/value_pb.js";
import type { ViewFrame } from "./gen/arcana/v1/view_pb.js";
import { ArcanaError, Code } from "./errors.js";

/** Supplies the bearer token for each call; undefined sends none. */
export type TokenSource = string | undefined | (() => string | undefined | Promise<string | undefined>);

/** What a session reports to its owner. */
export interface SessionHandlers {
  /**
   * Frames in the order the server sent them: one for a `frame` message, all
   * of a `frames` message (`batch` true) at once.
   */
  onFrames(frames: readonly ViewFrame[], batch: boolean): void;
  /** Called once when the session ends on its own (not after `close()`). */
  onClose(error: ArcanaError): void;
}

/** One server session, whichever the transport. */
export interface Session {
  readonly info: SessionOpened;
  subscribe(graph: string, params: Record<string, Value>, window?: Window): Promise<SubscribeResponse>;
  unsubscribe(viewId: string): Promise<void>;
  /** Moves a windowed view to another window; its diff comes on the session stream. */
  reanchor(viewId: string, window: Window): Promise<ReanchorResponse>;
  sync(views: SyncView[]): Promise<SyncResponse>;
  mutate(mutation: string, params: Record<string, Value>): Promise<MutateResponse>;
  close(): void;
}

export type SessionMode = "bidi" | "stream";

export interface SessionOptions {
  transport: Transport;
  token: TokenSource;
  /** Bidi only: ping interval; a ping unanswered for as long again drops the session. 0 disables. */
  pingIntervalMs?: number;
  /** Bound on waiting for `opened`. */
  openTimeoutMs?: number;
}

export async function authHeaders(token: TokenSource): Promise<Record<string, string>> {
  const t = typeof token === "function" ? await token() : token;
  return t ? { authorization: `Bearer ${t}` } : {};
}

/** Opens a session with the given strategy. */
export function openSession(
  mode: SessionMode,
  opts: SessionOptions,
  handlers: SessionHandlers,
): Promise<Session> {
  return mode === "bidi" ? BidiSession.open(opts, handlers) : StreamSession.open(opts, handlers);
}

/** A queue that a streaming request reads from. */
class Outbox implements AsyncIterable<ClientMessage> {
  private items: ClientMessage[] = [];
  private wake: (() => void) | undefined;
  private ended = false;

  push(m: ClientMessage): void {
    if (this.ended) return;
    this.items.push(m);
    this.wake?.();
  }

  end(): void {
    this.ended = true;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ClientMessage> {
    for (;;) {
      while (this.items.length > 0) yield this.items.shift()!;
      if (this.ended) return;
      await new Promise<void>((r) => (this.wake = r));
      this.wake = undefined;
    }
  }
}

type RequestKind = NonNullable<MessageInitShape<typeof ClientMessageSchema>["kind"]>;

interface Pending {
  resolve(v: unknown): void;
  reject(e: ArcanaError): void;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string, onTimeout: () => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => {
      onTimeout();
      reject(new ArcanaError(Code.DEADLINE_EXCEEDED, `${what}: no answer within ${ms} ms`));
    }, ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}

class BidiSession implements Session {
  private readonly outbox = new Outbox();
  private readonly pending = new Map<bigint, Pending>();
  private nextId = 1n;
  private closed = false;
  private pinger: ReturnType<typeof setInterval> | undefined;
  info!: SessionOpened;

  private constructor(
    private readonly abort: AbortController,
    private readonly handlers: SessionHandlers,
  ) {}

  static async open(opts: SessionOptions, handlers: SessionHandlers): Promise<BidiSession> {
    const abort = new AbortController();
    const s = new BidiSession(abort, handlers);
    const client = createClient(ArcanaService, opts.transport);
    const headers = await authHeaders(opts.token);
    let opened!: (i: SessionOpened) => void;
    let failed!: (e: ArcanaError) => void;
    const ready = new Promise<SessionOpened>((res, rej) => {
      opened = res;
      failed = rej;
    });
    let isOpen = false;
    void (async () => {
      let error: ArcanaError;
      try {
        for await (const msg of client.connect(s.outbox, { signal: abort.signal, headers })) {
          if (!isOpen) {
            if (msg.kind.case !== "opened") {
              throw new ArcanaError(Code.INTERNAL, `expected opened first, got ${msg.kind.case}`);
            }
            isOpen = true;
            s.info = msg.kind.value;
            opened(msg.kind.value);
            continue;
          }
          s.dispatch(msg);
        }
        error = new ArcanaError(Code.UNAVAILABLE, "the server ended the session");
      } catch (err) {
        error = ArcanaError.from(err);
      }
      s.end(error, isOpen);
      if (!isOpen) failed(error);
    })();
    try {
      await withTimeout(ready, opts.openTimeoutMs ?? 15000, "opening a session", () => abort.abort());
    } catch (err) {
      s.closed = true;
      abort.abort();
      throw err;
    }
    const every = opts.pingIntervalMs ?? 15000;
    if (every > 0) {
      s.pinger = setInterval(() => {
        s.request({ case: "ping", value: {} }, every).catch((e: ArcanaError) => {
          if (e.code === Code.DEADLINE_EXCEEDED) {
            s.end(new ArcanaError(Code.UNAVAILABLE, "the server stopped answering pings"), true);
          }
        });
      }, every);
      (s.pinger as { unref?: () => void }).unref?.();
    }
    return s;
  }

  private dispatch(msg: ServerMessage): void {
    switch (msg.kind.case) {
      case "frame":
        this.handlers.onFrames([msg.kind.value], false);
        return;
      case "frames":
        this.handlers.onFrames(msg.kind.value.frames, true);
        return;
      case "reply": {
        const r = msg.kind.value;
        const p = this.pending.get(r.requestId);
        if (!p) return;
        this.pending.delete(r.requestId);
        if (r.result.case === "error") p.reject(new ArcanaError(r.result.value.code, r.result.value.message));
        else p.resolve(r.result.value);
        return;
      }
      default:
        return;
    }
  }

  /** Ends the session: fails pending requests and tells the owner (unless closed by it). */
  private end(error: ArcanaError, notify: boolean): void {
    const wasClosed = this.closed;
    this.closed = true;
    if (this.pinger) clearInterval(this.pinger);
    this.outbox.end();
    this.abort.abort();
    for (const p of this.pending.values()) {
      p.reject(new ArcanaError(Code.UNAVAILABLE, `session lost before the reply: ${error.rawMessage}`, { cause: error }));
    }
    this.pending.clear();
    if (notify && !wasClosed) this.handlers.onClose(error);
  }

  private request<T>(kind: RequestKind, timeoutMs?: number): Promise<T> {
    if (this.closed) return Promise.reject(new ArcanaError(Code.UNAVAILABLE, "the session is closed"));
    const id = this.nextId++;
    const p = new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
    });
    this.outbox.push(create(ClientMessageSchema, { requestId: id, kind }));
    if (timeoutMs === undefined) return p;
    return withTimeout(p, timeoutMs, kind.case ?? "request", () => this.pending.delete(id));
  }

  subscribe(graph: string, params: Record<string, Value>, window?: Window): Promise<SubscribeResponse> {
    return this.request({ case: "subscribe", value: { graph, params, window } });
  }
  reanchor(viewId: string, window: Window): Promise<ReanchorResponse> {
    return this.request({ case: "reanchor", value: { viewId, window } });
  }
  async unsubscribe(viewId: string): Promise<void> {
    await this.request({ case: "unsubscribe", value: { viewId } });
  }
  sync(views: SyncView[]): Promise<SyncResponse> {
    return this.request({ case: "sync", value: { views } });
  }
  mutate(mutation: string, params: Record<string, Value>): Promise<MutateResponse> {
    return this.request({ case: "mutate", value: { mutation, params } });
  }
  close(): void {
    this.end(new ArcanaError(Code.CANCELLED, "closed by the client"), false);
  }
}

class StreamSession implements Session {
  private closed = false;
  info!: SessionOpened;

  private constructor(
    private readonly client: Client<typeof ArcanaService>,
    private readonly token: TokenSource,
    private readonly abort: AbortController,
    private readonly handlers: SessionHandlers,
  ) {}

  static async open(opts: SessionOptions, handlers: SessionHandlers): Promise<StreamSession> {
    const abort = new AbortController();
    const client = createClient(ArcanaService, opts.transport);
    const s = new StreamSession(client, opts.token, abort, handlers);
    const headers = await authHeaders(opts.token);
    let opened!: (i: SessionOpened) => void;
    let failed!: (e: ArcanaError) => void;
    const ready = new Promise<SessionOpened>((res, rej) => {
      opened = res;
      failed = rej;
    });
    let isOpen = false;
    void (async () => {
      let error: ArcanaError;
      try {
        for await (const msg of client.openSession({}, { signal: abort.signal, headers })) {
          if (!isOpen) {
            if (msg.kind.case !== "opened") {
              throw new ArcanaError(Code.INTERNAL, `expected opened first, got ${msg.kind.case}`);
            }
            isOpen = true;
            s.info = msg.kind.value;
            opened(msg.kind.value);
            continue;
          }
          if (msg.kind.case === "frame") handlers.onFrames([msg.kind.value], false);
          else if (msg.kind.case === "frames") handlers.onFrames(msg.kind.value.frames, true);
        }
        error = new ArcanaError(Code.UNAVAILABLE, "the server ended the session");
      } catch (err) {
        error = ArcanaError.from(err);
      }
      const wasClosed = s.closed;
      s.closed = true;
      if (!isOpen) failed(error);
      else if (!wasClosed) handlers.onClose(error);
    })();
    try {
      await withTimeout(ready, opts.openTimeoutMs ?? 15000, "opening a session", () => abort.abort());
    } catch (err) {
      s.closed = true;
      abort.abort();
      throw err;
    }
    return s;
  }

  private async call<T>(fn: (headers: Record<string, string>) => Promise<T>): Promise<T> {
    if (this.closed) throw new ArcanaError(Code.UNAVAILABLE, "the session is closed");
    try {
      return await fn(await authHeaders(this.token));
    } catch (err) {
      const e = ArcanaError.from(err);
      if (e.code === Code.NOT_FOUND && e.rawMessage.includes(this.info.sessionId)) {
        // The server no longer knows this session: treat it as lost.
        const lost = new ArcanaError(Code.UNAVAILABLE, e.rawMessage, { cause: e });
        this.lose(lost);
        throw lost;
      }
      throw e;
    }
  }

  private lose(e: ArcanaError): void {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    this.handlers.onClose(e);
  }

  subscribe(graph: string, params: Record<string, Value>, window?: Window): Promise<SubscribeResponse> {
    return this.call((headers) =>
      this.client.subscribe({ graph, params, window, sessionId: this.info.sessionId }, { headers }),
    );
  }
  reanchor(viewId: string, window: Window): Promise<ReanchorResponse> {
    return this.call((headers) =>
      this.client.reanchor({ viewId, window, sessionId: this.info.sessionId }, { headers }),
    );
  }
  async unsubscribe(viewId: string): Promise<void> {
    await this.call((headers) =>
      this.client.unsubscribe({ viewId, sessionId: this.info.sessionId }, { headers }),
    );
  }
  sync(views: SyncView[]): Promise<SyncResponse> {
    return this.call((headers) => this.client.sync({ views, sessionId: this.info.sessionId }, { headers }));
  }
  mutate(mutation: string, params: Record<string, Value>): Promise<MutateResponse> {
    // Naming the session makes the response carry the versions of our views
    // that include this write (see ArcanaClient.mutate).
    return this.call((headers) =>
      this.client.mutate({ mutation, params, sessionId: this.info.sessionId }, { headers }),
    );
  }
  close(): void {
    this.closed = true;
    this.abort.abort();
  }
}
