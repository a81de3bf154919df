// Keeps the views subscribed on the current session: subscribes new views,
// brings views that held state back with Sync after a reconnect or a gap,
// moves windows with Reanchor, and unsubscribes views nobody holds.
import { create } from "@bufbuild/protobuf";
import type { Connection } from "./connection.js";
import { ArcanaError, Code } from "./errors.js";
import type { FrameDispatcher } from "./frames.js";
import { type ReanchorResponse, type SyncResult, SyncMode, SyncViewSchema } from "./gen/arcana/v1/service_pb.js";
import type { Persister } from "./persister.js";
import { type ViewRegistry, viewKey } from "./registry.js";
import type { Session } from "./session.js";
import { toParams } from "./values.js";
import type { LiveView, SyncInfo } from "./view.js";
import { type WindowSpec, toPbWindow } from "./window.js";

export class ViewSync {
  constructor(
    private readonly registry: ViewRegistry,
    private readonly conn: Connection,
    private readonly frames: FrameDispatcher,
    private readonly persister: Persister,
  ) {}

  /** On a new session: Sync the views that had state, subscribe the others. */
  async restore(s: Session): Promise<void> {
    const held: LiveView<any>[] = [];
    const fresh: LiveView<any>[] = [];
    for (const v of this.registry.byKey.values()) {
      if (v.status === "closed" || v.status === "error") continue;
      if (v.epoch !== undefined && v.id) held.push(v);
      else fresh.push(v);
    }
    for (const v of fresh) void this.subscribe(v, s);
    if (held.length === 0) return;
    for (const v of held) v.resyncing = true;
    try {
      const res = await s.sync(held.map((v) => this.syncView(v)));
      res.results.forEach((r, i) => this.onSyncResult(held[i]!, r));
    } catch (err) {
      // The session failed meanwhile; the next one retries.
      for (const v of held) v.resyncing = false;
      if (this.conn.session === s) this.conn.drop();
      void err;
    }
  }

  /** What Sync asks for a view: its position, and the window it holds. */
  syncView(v: LiveView<any>) {
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
      const s = this.conn.session;
      if (r.viewId && !this.registry.hasId(r.viewId) && s) void s.unsubscribe(r.viewId).catch(() => {});
      return;
    }
    if (r.error) {
      this.failView(v, new ArcanaError(r.error.code, r.error.message));
      return;
    }
    const mode = r.mode === SyncMode.CATCH_UP ? "catch_up" : r.mode === SyncMode.SNAPSHOT ? "snapshot" : "current";
    const info: SyncInfo = { mode, epoch: r.epoch, version: r.version, frames: r.frames };
    v.lastSync = info;
    if (r.viewId && r.viewId !== v.id) this.registry.bind(v, r.viewId);
    this.frames.drainOrphans(v);
    // Caught up already (frames came first, or nothing was missed)? Then live;
    // otherwise the frames still on their way make it live.
    if (v.epoch === r.epoch && v.version >= r.version && (v.status === "stale" || v.status === "connecting")) {
      v.setStatus("live");
    } else {
      v.changed();
    }
  }

  /** Subscribes a view on `s`. */
  async subscribe(v: LiveView<any>, s: Session, retried = false): Promise<void> {
    try {
      const r = await s.subscribe(v.graph, toParams(v.params), v.window && toPbWindow(v.window));
      if (!this.take(v, s, r.viewId)) return;
      // Another view already held this server view and may have taken the
      // snapshot meant for this one: ask for a fresh one.
      const peers = this.registry.withId(r.viewId);
      if (v.epoch === undefined && peers && [...peers].some((p) => p !== v && p.epoch !== undefined)) {
        this.resync(v);
      }
    } catch (err) {
      const e = ArcanaError.from(err);
      if (this.conn.session !== s || e.code === Code.UNAVAILABLE || e.code === Code.CANCELLED) {
        return; // the session is gone: the next one subscribes again
      }
      // The session keeps a window's view id for the subscription that was
      // re-anchored away from it: give that one an id of its own, then retry.
      const mover = e.code === Code.ALREADY_EXISTS && !retried ? this.movedFrom(v) : undefined;
      if (mover && v.status !== "closed") {
        try {
          await this.relocate(mover, s);
          return await this.subscribe(v, s, true);
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
    for (const l of this.registry.byKey.values()) {
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
    this.registry.unbind(l);
    l.id = undefined;
    await s.unsubscribe(old).catch(() => {});
    const r = await s.subscribe(l.graph, toParams(l.params), l.window && toPbWindow(l.window));
    this.take(l, s, r.viewId);
  }

  /**
   * Gives a view the id its subscription got, with the frames that came for
   * it first. False when the view closed meanwhile: then the server view is
   * let go, unless another view holds it.
   */
  private take(v: LiveView<any>, s: Session, viewId: string): boolean {
    if (v.status === "closed") {
      if (!this.registry.hasId(viewId)) void s.unsubscribe(viewId).catch(() => {});
      return false;
    }
    this.registry.bind(v, viewId);
    this.frames.drainOrphans(v);
    return true;
  }

  private failView(v: LiveView<any>, e: ArcanaError): void {
    this.registry.unbind(v);
    this.registry.byKey.delete(v.key);
    v.dropRows();
    v.setStatus("error", e);
    this.persister.forget(v.key);
  }

  /** Lets go of one handle; the last one closes the view and unsubscribes. */
  release(v: LiveView<any>): void {
    v.handles--;
    if (v.handles > 0) return;
    if (this.registry.byKey.get(v.key) === v) this.registry.byKey.delete(v.key);
    if (v.id && this.registry.unbind(v)) {
      const s = this.conn.session;
      if (s) void s.unsubscribe(v.id).catch(() => {});
    }
    v.dropRows();
    v.setStatus("closed");
  }

  /** Brings a view that missed frames back in line, on the same session. */
  resync(v: LiveView<any>): void {
    const s = this.conn.session;
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

  /**
   * Moves a windowed view to `window` in place, with Reanchor. "subscribe"
   * when it cannot be moved without moving someone else (other handles share
   * it, or the session holds that window already): the caller then
   * subscribes to the new window instead. Resolves once the view holds the
   * new window.
   */
  async move(v: LiveView<any>, window: WindowSpec): Promise<"moved" | "subscribe"> {
    const views = this.registry.byKey;
    const key = viewKey(v.graph, v.params, window);
    const peers = v.id ? this.registry.withId(v.id) : undefined;
    if (!toPbWindow(window)) return "subscribe"; // the default window is subscribed to, not moved to
    if (v.handles > 1 || (peers && peers.size > 1) || views.has(key)) return "subscribe";
    if (!v.id || v.epoch === undefined || v.moving || v.status === "closed" || v.status === "error") {
      return "subscribe";
    }
    const s = await this.conn.ensure();
    // The view may have closed or gained a sharer while the session opened.
    if ((v.status as string) === "closed" || !v.id || v.handles > 1 || views.has(key)) return "subscribe";
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
      if (e.code === Code.UNAVAILABLE || this.conn.session !== s) {
        // Unknown whether the server moved it: a Sync (now, or on the next
        // session) asks for the new window outright.
        if (this.conn.session === s) this.resync(v);
        await moved;
        return "moved";
      }
      if (v.moving?.window === window) {
        v.moving = undefined;
        if (views.get(key) === v && !views.has(from)) this.rekey(v, from);
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
    const views = this.registry.byKey;
    if (views.get(v.key) === v) views.delete(v.key);
    this.persister.forget(v.key);
    v.key = key;
    views.set(key, v);
    this.persister.markDirty(v);
  }
}
