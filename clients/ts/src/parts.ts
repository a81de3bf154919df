// Snapshot parts: a big snapshot arrives as consecutive frames of one view and
// version, `more` set on all but the last. They are put back together here,
// before any view sees them, so a view never shows a partial list.
import { create } from "@bufbuild/protobuf";
import { type ViewFrame, ViewFrameSchema } from "./gen/arcana/v1/view_pb.js";

interface Pending {
  epoch: bigint;
  version: bigint;
  parts: ViewFrame[];
}

/** Puts snapshot parts back together, per view id. */
export class SnapshotParts {
  private readonly pending = new Map<string, Pending>();

  /** Number of views with parts waiting for their last one. */
  get waiting(): number {
    return this.pending.size;
  }

  /**
   * Takes one frame. Returns the frame to apply: the frame itself, or the
   * whole snapshot once its last part is in; undefined while parts are still
   * expected. Parts of an abandoned snapshot (another version begins, or any
   * other frame of the view comes between) are dropped.
   */
  push(f: ViewFrame): ViewFrame | undefined {
    const held = this.pending.get(f.viewId);
    const isSnap = f.body.case === "snapshot";
    const same = held !== undefined && isSnap && held.epoch === f.epoch && held.version === f.version;
    if (held && !same) this.pending.delete(f.viewId);
    if (!isSnap) return f;
    const more = f.body.case === "snapshot" && f.body.value.more;
    if (more) {
      if (same) held.parts.push(f);
      else this.pending.set(f.viewId, { epoch: f.epoch, version: f.version, parts: [f] });
      return undefined;
    }
    if (!same) return f;
    this.pending.delete(f.viewId);
    return join([...held.parts, f]);
  }

  /** Forgets every part held (the session they came on is gone). */
  clear(): void {
    this.pending.clear();
  }
}

/** One snapshot frame from its parts: refs and rows in order, the rest from the last part. */
function join(parts: ViewFrame[]): ViewFrame {
  const last = parts[parts.length - 1]!;
  const snaps = parts.map((p) => (p.body.case === "snapshot" ? p.body.value : undefined)!);
  const tail = snaps[snaps.length - 1]!;
  const total = [...snaps].reverse().find((s) => s.total !== undefined)?.total;
  const window = [...snaps].reverse().find((s) => s.window !== undefined)?.window;
  return create(ViewFrameSchema, {
    viewId: last.viewId,
    epoch: last.epoch,
    version: last.version,
    prevVersion: last.prevVersion,
    prevEpoch: last.prevEpoch,
    body: {
      case: "snapshot",
      value: {
        graph: snaps[0]!.graph || tail.graph,
        paramsHash: snaps[0]!.paramsHash || tail.paramsHash,
        refs: snaps.flatMap((s) => s.refs),
        rows: snaps.flatMap((s) => s.rows),
        total,
        window,
        more: false,
      },
    },
  });
}
