// Frame dispatch: frames from the session go to the views that show their
// view id, in order; frames for ids not known yet wait a while for their view.
import type { ViewFrame } from "./gen/arcana/v1/view_pb.js";
import { SnapshotParts } from "./parts.js";
import type { ViewRegistry } from "./registry.js";
import type { LiveView } from "./view.js";

/** Frames this client received, for diagnostics and tests. */
export interface FrameCounts {
  /** Frames, whether they came alone or in a batch. */
  readonly frames: number;
  /** Batch messages (`ServerMessage.frames`) among them. */
  readonly batches: number;
}

/** Frames for view ids not (yet) known are kept this long, for the unary subscribe race. */
const ORPHAN_TTL_MS = 30_000;
const ORPHAN_MAX = 1000;

export class FrameDispatcher {
  private orphans: { frame: ViewFrame; at: number }[] = [];
  /** Snapshots arriving in parts, until their last part. */
  readonly parts = new SnapshotParts();
  private frameCount = 0;
  private batchCount = 0;
  /** While frames are being applied: the views whose listeners are still to be told. */
  private deferred: Set<LiveView<any>> | undefined;

  constructor(
    private readonly registry: ViewRegistry,
    /** Brings a view that hit a gap back in line. */
    private readonly resync: (v: LiveView<any>) => void,
  ) {}

  get received(): FrameCounts {
    return { frames: this.frameCount, batches: this.batchCount };
  }

  /** Holds back a view's listeners until the frames being applied are all in; false when none are. */
  defer(v: LiveView<any>): boolean {
    if (!this.deferred) return false;
    this.deferred.add(v);
    return true;
  }

  /**
   * Applies frames in order, each as if it had come alone. Listeners are told
   * once all of them are applied: a view's listeners see each batch as one
   * change, and every view is consistent with the others when they do.
   */
  onFrames(frames: readonly ViewFrame[], batch: boolean): void {
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
    const views = this.registry.withId(f.viewId);
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

  /** Applies the frames that came for a view's id before the view had it. */
  drainOrphans(v: LiveView<any>): void {
    if (!v.id || this.orphans.length === 0) return;
    const mine = this.orphans.filter((o) => o.frame.viewId === v.id);
    if (mine.length === 0) return;
    this.orphans = this.orphans.filter((o) => o.frame.viewId !== v.id);
    for (const o of mine) this.applyFrame(v, o.frame);
  }

  clear(): void {
    this.orphans = [];
    this.parts.clear();
  }
}
