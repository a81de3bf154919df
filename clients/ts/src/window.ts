// Windows over ordered graphs: what a window is on the client, and how it
// travels (the protobuf Window) and names a shared view (its key part).
import { create } from "@bufbuild/protobuf";
import { type Window, WindowDirection, WindowSchema } from "./gen/arcana/v1/service_pb.js";
import type { Value } from "./gen/arcana/v1/value_pb.js";
import { type ParamValue, toValue } from "./values.js";

/** Which side of the cursor a window's rows are on. */
export type Direction = "after" | "before" | "around";

/** A window as the caller asks for it. */
export interface WindowOptions {
  /**
   * Most rows in the window. Left out, the window is the graph's default
   * window (its first `default_limit` rows), which takes no cursor.
   */
  limit?: number;
  /**
   * The order-key values of the anchor row, in the graph's order-key order
   * (`GraphInfo.window.order`). None: the start of the list (`after`) or its
   * end (`before`).
   */
  cursor?: readonly ParamValue[];
  /** Default `after`; `around` needs a cursor. */
  direction?: Direction;
  /** With a cursor (`after`, `before`): whether the anchor row is in the window. */
  inclusive?: boolean;
}

/** A window as a view holds it: every part explicit, the cursor encoded. */
export interface WindowSpec {
  /** 0: the graph's default window (no cursor, `after`). */
  readonly limit: number;
  readonly cursor: readonly Value[];
  readonly direction: Direction;
  readonly inclusive: boolean;
}

/** The explicit window for `opts`. */
export function windowSpec(opts: WindowOptions = {}): WindowSpec {
  const limit = opts.limit ?? 0;
  if (!Number.isInteger(limit) || limit < 0 || limit > 0xffff_ffff) {
    throw new RangeError(`window limit must be a whole number above 0 (got ${limit})`);
  }
  const w: WindowSpec = Object.freeze({
    limit,
    cursor: Object.freeze((opts.cursor ?? []).map((v) => toValue(v))),
    direction: opts.direction ?? "after",
    inclusive: opts.inclusive ?? false,
  });
  if (limit === 0 && !isDefault(w)) {
    throw new RangeError("give the window a limit: without one it is the graph's default window, which takes no cursor or direction");
  }
  return w;
}

/** The graph's default window: what a subscription without a window gets. */
function isDefault(w: WindowSpec): boolean {
  return w.limit === 0 && w.cursor.length === 0 && w.direction === "after" && !w.inclusive;
}

const DIRECTIONS: Record<Direction, WindowDirection> = {
  after: WindowDirection.AFTER,
  before: WindowDirection.BEFORE,
  around: WindowDirection.AROUND,
};

/** The protobuf Window for a spec; none for the graph's default window. */
export function toPbWindow(w: WindowSpec): Window | undefined {
  if (isDefault(w)) return undefined;
  return create(WindowSchema, {
    limit: w.limit,
    cursor: [...w.cursor],
    direction: DIRECTIONS[w.direction],
    inclusive: w.inclusive,
  });
}

/** Text that is equal exactly when two windows are. */
export function windowKey(w: WindowSpec): string {
  const cursor = w.cursor.map((v) => {
    const k = v.kind;
    if (k.case === "timestamp") return `timestamp:${k.value.seconds}.${k.value.nanos}`;
    if (k.case === "bytes") return `bytes:${[...k.value].join(",")}`;
    return `${k.case}:${String(k.value)}`;
  });
  return JSON.stringify([w.limit, w.direction, w.inclusive, cursor]);
}

/** Whether two windows are the same. */
export function sameWindow(a: WindowSpec | undefined, b: WindowSpec | undefined): boolean {
  if (a === b) return true;
  if (!a || !b) return false;
  return windowKey(a) === windowKey(b);
}
