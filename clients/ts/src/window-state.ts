// The window logic the React, Vue and Svelte bindings share: the moves they
// offer, how a failed move becomes the state's `error` instead of a
// rejection, and (for Vue and Svelte) the one window held open at a time.
// Framework-neutral: each binding only maps it onto its own reactivity.
import { EMPTY } from "./bindings.js";
import type { ArcanaError } from "./errors.js";
import type { ParamValue } from "./values.js";
import type { WindowSpec } from "./window.js";
import type { ReanchorOptions, WindowSnapshot, WindowView } from "./window-view.js";

/** One move of a window (reanchor, loadMore, loadPrevious). */
export type Move<T> = (h: WindowView<T>) => Promise<WindowSnapshot<T>>;

/** Runs a move; resolves with the new state, or `undefined` when it failed or there was no window. */
export type MoveRunner<T> = (move: Move<T>) => Promise<WindowSnapshot<T> | undefined>;

/** The calls that move a window, as the bindings expose them. */
export interface WindowMoves<T> {
  loadMore(n: number): Promise<WindowSnapshot<T> | undefined>;
  loadPrevious(n: number): Promise<WindowSnapshot<T> | undefined>;
  reanchor(cursor: readonly ParamValue[], options?: ReanchorOptions): Promise<WindowSnapshot<T> | undefined>;
}

/** The state of a window before it exists (no graph yet). */
export function emptyWindow(window: WindowSpec): WindowSnapshot<never> {
  return Object.freeze({ ...EMPTY, hasBefore: false, hasAfter: false, window, moving: false });
}

/**
 * Runs moves on the window current when each starts. The outcome goes to
 * `settled` (with the error, or `undefined` on success) and never rejects:
 * a failed move must not become an unhandled rejection in a UI handler.
 */
export function moveRunner<T>(
  current: () => WindowView<T> | null | undefined,
  settled: (h: WindowView<T>, error: ArcanaError | undefined) => void,
): MoveRunner<T> {
  return async (move) => {
    const h = current();
    if (!h) return undefined;
    try {
      const s = await move(h);
      settled(h, undefined);
      return s;
    } catch (err) {
      settled(h, err as ArcanaError);
      return undefined;
    }
  };
}

/** `loadMore`, `loadPrevious` and `reanchor` over a runner. */
export function windowMoves<T>(run: MoveRunner<T>): WindowMoves<T> {
  return {
    loadMore: (n) => run((h) => h.loadMore(n)),
    loadPrevious: (n) => run((h) => h.loadPrevious(n)),
    reanchor: (cursor, o) => run((h) => h.reanchor(cursor, o)),
  };
}

/** The move to where `w` places a window: new options re-anchor the open window rather than reopen it. */
export function placeAt<T>(w: WindowSpec): Move<T> {
  return (h) => h.reanchor(w.cursor, { limit: w.limit, direction: w.direction, inclusive: w.inclusive });
}

/** One window at a time with the error of its last failed move. */
export interface HeldWindow<T> {
  readonly handle: WindowView<T> | null;
  /** Moves of the held window; they do nothing (resolve `undefined`) while none is held. */
  readonly moves: WindowMoves<T>;
  readonly run: MoveRunner<T>;
  /** Holds `h` (after `close`) and follows it; it calls back at once. */
  hold(h: WindowView<T>): void;
  /** Lets go of the window and closes it; its move error goes with it. */
  close(): void;
  /** The held window's state, showing a failed move's error while the window has none of its own. */
  snapshot(): WindowSnapshot<T> | undefined;
}

/**
 * Holds a window for a binding that keeps its own state: `changed` runs
 * when the window changes and when a move's error comes or goes. A move
 * that settles after its window was let go of changes nothing.
 */
export function holdWindow<T>(changed: () => void): HeldWindow<T> {
  let handle: WindowView<T> | null = null;
  let off: (() => void) | undefined;
  let moveError: ArcanaError | undefined;
  const run = moveRunner<T>(
    () => handle,
    (h, error) => {
      if (handle !== h || (!error && !moveError)) return;
      moveError = error;
      changed();
    },
  );
  const close = () => {
    off?.();
    handle?.close();
    off = undefined;
    handle = null;
    moveError = undefined;
  };
  return {
    get handle() {
      return handle;
    },
    moves: windowMoves(run),
    run,
    hold(h) {
      close();
      handle = h;
      off = h.subscribe(() => changed());
    },
    close,
    snapshot() {
      if (!handle) return undefined;
      const snap = handle.snapshot;
      return moveError && !snap.error ? Object.freeze({ ...snap, error: moveError }) : snap;
    },
  };
}
