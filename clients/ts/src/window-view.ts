// A window handle: one caller's window over an ordered graph. It shows a
// live view and moves it (Reanchor) when nobody else shares it, or
// subscribes to the new window and lets go of the old one when someone does.
import type { RowCache } from "./cache.js";
import { ArcanaError, Code } from "./errors.js";
import type { GraphInfo } from "./gen/arcana/v1/describe_pb.js";
import type { Value } from "./gen/arcana/v1/value_pb.js";
import { type ParamValue, type Params, toValue, valueAs } from "./values.js";
import { type Item, type LiveView, type ViewSnapshot, until } from "./view.js";
import { type Direction, type WindowOptions, type WindowSpec, sameWindow, windowSpec } from "./window.js";

/** A window's state: the view's, plus where the window stands in the list. */
export interface WindowSnapshot<T = Item> extends ViewSnapshot<T> {
  /** Rows exist before the first row shown. */
  readonly hasBefore: boolean;
  /** Rows exist after the last row shown. */
  readonly hasAfter: boolean;
  /** The window the rows are of. */
  readonly window: WindowSpec;
  /** A move (reanchor, loadMore, loadPrevious) is on its way. */
  readonly moving: boolean;
}

/**
 * @internal What a window needs of its client. The client is one; naming
 * this instead keeps window-view.ts from importing client.ts, which imports it.
 */
export interface WindowHost {
  readonly cache: RowCache;
  graphInfo(graph: string): Promise<GraphInfo | undefined>;
  openView<T>(graph: string, params: Params, window: WindowSpec | undefined): LiveView<T>;
  moveView(v: LiveView<any>, window: WindowSpec): Promise<"moved" | "subscribe">;
}

/** How `reanchor` places the new window; what is left out is kept. */
export type ReanchorOptions = Omit<WindowOptions, "cursor">;

/**
 * A live window over an ordered graph (from `client.window`). Its rows are
 * always one window of the list, in order, never a half-moved mix. Moves
 * queue up: each starts from where the one before it left the window.
 */
export class WindowView<T = Item> {
  private view: LiveView<T>;
  private off: () => void;
  private queue: Promise<unknown> = Promise.resolve();
  private pending = 0;
  private closed = false;
  private readonly listeners = new Set<(s: WindowSnapshot<T>) => void>();
  private memo: { of: ViewSnapshot<T>; moving: boolean; snap: WindowSnapshot<T> } | undefined;
  /** The view's state and window as last told to its listeners: always one whole window. */
  private shown: { s: ViewSnapshot<T>; window: WindowSpec };

  /** @internal Made by `client.window`. */
  constructor(
    private readonly client: WindowHost,
    readonly graph: string,
    readonly params: Params,
    view: LiveView<T>,
  ) {
    this.view = view;
    this.shown = { s: view.snapshot, window: view.window! };
    this.off = this.watch(view);
  }

  private watch(view: LiveView<T>): () => void {
    return view.subscribe((s) => {
      this.shown = { s, window: view.window! };
      this.emit();
    });
  }

  /** The current state (a new object after every change). */
  get snapshot(): WindowSnapshot<T> {
    const { s, window } = this.shown;
    const moving = this.pending > 0;
    if (this.memo?.of === s && this.memo.moving === moving) return this.memo.snap;
    const snap: WindowSnapshot<T> = Object.freeze({
      ...s,
      hasBefore: s.edges?.hasBefore ?? false,
      hasAfter: s.edges?.hasAfter ?? false,
      window,
      moving,
    });
    this.memo = { of: s, moving, snap };
    return snap;
  }

  get items(): readonly T[] {
    return this.snapshot.items;
  }
  get hasBefore(): boolean {
    return this.snapshot.hasBefore;
  }
  get hasAfter(): boolean {
    return this.snapshot.hasAfter;
  }
  get status() {
    return this.snapshot.status;
  }
  /** The window the rows shown are of. */
  get window(): WindowSpec {
    return this.snapshot.window;
  }
  /** The server's view id of the rows shown. */
  get id(): string | undefined {
    return this.view.id;
  }

  /** Calls `fn` at once with the current state, then after every change. */
  subscribe(fn: (s: WindowSnapshot<T>) => void): () => void {
    this.listeners.add(fn);
    fn(this.snapshot);
    return () => {
      this.listeners.delete(fn);
    };
  }

  /** Resolves with the first state that has data; rejects if the subscription fails. */
  ready(): Promise<WindowSnapshot<T>> {
    return this.until((s) => s.epoch !== undefined);
  }

  /**
   * Resolves with the first state `pred` accepts (the current one included);
   * rejects when the window fails or closes first, or after `timeoutMs`.
   */
  until(pred: (s: WindowSnapshot<T>) => boolean, timeoutMs?: number): Promise<WindowSnapshot<T>> {
    return until((fn) => this.subscribe(fn), pred, `window of ${this.graph}`, timeoutMs);
  }

  /**
   * Moves the window next to `cursor` (the order-key values of a row, see
   * `cursorOf`); limit, direction and inclusive are kept unless given.
   * Resolves once the rows shown are the new window's.
   */
  reanchor(cursor: readonly ParamValue[], options: ReanchorOptions = {}): Promise<WindowSnapshot<T>> {
    return this.enqueue(async () => {
      const w = this.view.window!;
      // The default window has no limit of its own: take the graph's.
      const limit = options.limit ?? (w.limit || (await this.client.graphInfo(this.graph))?.window?.defaultLimit);
      return windowSpec({
        limit: limit || this.view.refs.length || 1,
        cursor,
        direction: options.direction ?? w.direction,
        inclusive: options.inclusive ?? w.inclusive,
      });
    });
  }

  /**
   * Shows `n` more rows after the last one: the same cursor with a bigger
   * limit. Past the graph's largest window the window slides instead,
   * dropping rows at the start.
   */
  loadMore(n: number): Promise<WindowSnapshot<T>> {
    return this.enqueue(() => this.grown(n, "after"));
  }

  /**
   * Shows `n` more rows before the first one: the window ends at the last
   * row shown and reaches `n` rows further back. Past the graph's largest
   * window it slides instead, dropping rows at the end.
   */
  loadPrevious(n: number): Promise<WindowSnapshot<T>> {
    return this.enqueue(() => this.grown(n, "before"));
  }

  /**
   * The order-key values of the row shown at `index`, exactly as the server
   * sent them: a cursor for `reanchor`. Needs the graph's order (Describe).
   */
  async cursorOf(index: number): Promise<Value[]> {
    const info = await this.order();
    return this.keyAt(info, index);
  }

  /** Lets go of the window; the subscription ends when no one else holds it. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.off();
    this.view.close();
    this.emit();
  }

  // ---- moving ---------------------------------------------------------------

  private enqueue(target: () => Promise<WindowSpec | undefined>): Promise<WindowSnapshot<T>> {
    if (this.closed) return Promise.reject(new ArcanaError(Code.CANCELLED, "the window is closed"));
    this.pending++;
    this.emit();
    const run = this.queue
      .then(async () => {
        const spec = await target();
        if (spec && !this.closed) await this.moveTo(spec);
      })
      .finally(() => {
        this.pending--;
        this.emit();
      });
    this.queue = run.catch(() => {});
    return run.then(() => this.snapshot);
  }

  private async moveTo(spec: WindowSpec): Promise<void> {
    const v = this.view;
    if (sameWindow(v.window, spec)) return;
    if ((await this.client.moveView(v, spec)) === "moved") return;
    // Shared with others (or held under another id): subscribe to the new
    // window and show it once it has data; the old one stays for the others.
    const next = this.client.openView<T>(this.graph, this.params, spec);
    try {
      await next.ready();
    } catch (err) {
      next.close();
      throw err;
    }
    if (this.closed || this.view !== v) {
      next.close();
      return;
    }
    this.off();
    this.view = next;
    this.off = this.watch(next);
    v.close();
    this.emit();
  }

  /** The window `n` rows bigger at one edge (or slid, past the largest window). */
  private async grown(n: number, edge: Direction): Promise<WindowSpec | undefined> {
    if (!Number.isInteger(n) || n <= 0) throw new RangeError(`load ${n} rows: give a whole number above 0`);
    const w = this.view.window!;
    const refs = this.view.refs;
    const info = await this.order().catch((e) => {
      // Growing an `after` window forward needs no order; anything else does.
      if (edge === "after" && w.direction === "after") return undefined;
      throw e;
    });
    const order = info?.window;
    const limit = (w.limit || order?.defaultLimit || refs.length) + n;
    const max = order?.maxLimit || Infinity;
    const rows = refs.length;
    if (limit <= max) {
      if (w.direction === edge || rows === 0) return windowSpec({ ...w, limit });
      // Keep the row at the other edge fixed and reach further this way.
      const anchor = edge === "after" ? 0 : rows - 1;
      return windowSpec({ limit, cursor: this.keyAt(info!, anchor), direction: edge, inclusive: true });
    }
    // Too big: slide by what does not fit, keeping the largest window.
    if (rows === 0) return windowSpec({ ...w, limit: max });
    const drop = Math.min(limit - max, rows);
    const anchor = edge === "after" ? drop - 1 : rows - drop;
    return windowSpec({ limit: max, cursor: this.keyAt(info!, anchor), direction: edge, inclusive: false });
  }

  private async order(): Promise<GraphInfo> {
    const info = await this.client.graphInfo(this.graph);
    if (!info?.window || info.window.order.length === 0) {
      throw new ArcanaError(
        Code.FAILED_PRECONDITION,
        `graph ${this.graph} declares no window order, so its rows cannot serve as cursors`,
      );
    }
    return info;
  }

  private keyAt(info: GraphInfo, index: number): Value[] {
    const ref = this.view.refs[index];
    if (!ref) throw new RangeError(`no row at index ${index} (the window shows ${this.view.refs.length})`);
    const names = info.window!.order;
    const wire = this.view.wireFields(ref, names);
    if (wire) return wire;
    // A row restored from a persist store: encode its decoded fields by kind.
    const row = this.client.cache.get(ref.table, ref.id) ?? {};
    return names.map((n) => {
      const kind = info.fields.find((f) => f.nested === "" && f.name === n)?.kind;
      const v = row[n] ?? null;
      return (kind && valueAs(kind, v)) || toValue(v);
    });
  }

  private emit(): void {
    if (this.listeners.size === 0) return;
    const s = this.snapshot;
    for (const fn of [...this.listeners]) fn(s);
  }
}
