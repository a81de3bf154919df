// The client's session: opened lazily, reopened with backoff when it drops,
// and given up on only for errors a retry cannot fix.
import type { Transport } from "@connectrpc/connect";
import type { ViewFrame } from "./gen/arcana/v1/view_pb.js";
import { ArcanaError, Code, isRetryable } from "./errors.js";
import { type Session, type SessionMode, type TokenSource, openSession } from "./session.js";

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

export interface ConnectionOptions {
  transport: Transport;
  session: SessionMode;
  token?: TokenSource;
  backoff?: BackoffOptions;
  pingIntervalMs?: number;
}

/** What the connection tells the client about. */
export interface ConnectionEvents {
  /** Frames of the current session. */
  frames(frames: readonly ViewFrame[], batch: boolean): void;
  /** A session opened: bring the views onto it. */
  opened(s: Session): void;
  /** The session dropped (the connection retries when it can). */
  lost(e: ArcanaError): void;
  /** An attempt to connect failed and will be retried. */
  retrying(e: ArcanaError): void;
  /** The connection gave up: status "failed". */
  failed(e: ArcanaError): void;
}

export class Connection {
  private _session: Session | undefined;
  private connecting: Promise<Session> | undefined;
  private _status: ClientStatus = "idle";
  private _error: ArcanaError | undefined;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private generation = 0;
  private readonly statusListeners = new Set<(s: ClientStatus, e?: ArcanaError) => void>();

  constructor(
    private readonly opts: ConnectionOptions,
    private readonly events: ConnectionEvents,
    /** Sessions open once this settles (the persist store loading). */
    private readonly loaded?: Promise<void>,
  ) {}

  get status(): ClientStatus {
    return this._status;
  }

  get error(): ArcanaError | undefined {
    return this._error;
  }

  /** The open session, if any. */
  get session(): Session | undefined {
    return this._session;
  }

  onStatus(fn: (s: ClientStatus, error?: ArcanaError) => void): () => void {
    this.statusListeners.add(fn);
    return () => this.statusListeners.delete(fn);
  }

  private setStatus(s: ClientStatus, error?: ArcanaError): void {
    if (s === this._status) return;
    this._status = s;
    for (const fn of [...this.statusListeners]) fn(s, error);
  }

  /** The open session, or the one being opened. */
  ensure(): Promise<Session> {
    if (this._session) return Promise.resolve(this._session);
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
            if (this._session === s) this.events.frames(frames, batch);
          },
          onClose: (e) => this.lost(s, e),
        },
      );
    } catch (err) {
      const e = ArcanaError.from(err);
      this._error = e;
      if (gen !== this.generation) throw e;
      if (isRetryable(e)) {
        this.events.retrying(e);
        this.scheduleRetry();
      } else this.fail(e);
      throw e;
    }
    if (gen !== this.generation || this._status === "closed") {
      s.close();
      throw new ArcanaError(Code.CANCELLED, "the client is closed");
    }
    this._session = s;
    this.attempt = 0;
    this._error = undefined;
    this.setStatus("open");
    this.events.opened(s);
    return s;
  }

  private fail(e: ArcanaError): void {
    this.setStatus("failed", e);
    this.events.failed(e);
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
      if (this._session || this._status === "closed") return;
      void this.ensure().catch(() => {});
    }, delay);
  }

  private lost(s: Session, e: ArcanaError): void {
    if (this._session !== s) return;
    this._session = undefined;
    this._error = e;
    this.events.lost(e);
    if (isRetryable(e)) this.scheduleRetry();
    else this.fail(e);
  }

  /** Drops the session as if the network had failed. */
  drop(): void {
    const s = this._session;
    if (!s) return;
    s.close();
    this.lost(s, new ArcanaError(Code.UNAVAILABLE, "session dropped by the client"));
  }

  /** After "failed": try again. */
  retry(): void {
    if (this._status !== "failed") return;
    this._error = undefined;
    this.setStatus("idle");
    this.attempt = 0;
    void this.ensure().catch(() => {});
  }

  /**
   * Closes the session for good. `release` runs once it is closed and before
   * the status turns "closed", so that listeners see the views closed first.
   */
  close(release: () => void): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.generation++;
    const s = this._session;
    this._session = undefined;
    s?.close();
    release();
    this.setStatus("closed");
  }
}
