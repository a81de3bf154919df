// Svelte bindings: readable stores for views, windows, mutations, rows and
// the client's status. They follow the
// store contract (subscribe calls back at once, returns the unsubscriber), so
// `$tasks` works in components, with runes or without.
import type { ArcanaClient, MutateOptions, MutationResult } from "./client.js";
import { EMPTY } from "./bindings.js";
import type { Fields } from "./cache.js";
import type { ArcanaError } from "./errors.js";
import {
  type AnyClient,
  type GraphItem,
  type GraphName,
  type GraphParams,
  type MutationData,
  type MutationName,
  type MutationParams,
  type SchemaShape,
  type TypedClient,
  untyped,
} from "./typed.js";
import type { FieldValue, ParamValue, Params } from "./values.js";
import {
  type ClientStatusSnapshot,
  type Item,
  type LiveView,
  type ViewSnapshot,
  clientStatus,
  onClientStatus,
} from "./view.js";
import { type WindowOptions, windowSpec } from "./window.js";
import type { ReanchorOptions, WindowSnapshot, WindowView } from "./window-view.js";
import { emptyWindow, holdWindow } from "./window-state.js";

/** A Svelte readable store. */
export interface Readable<T> {
  subscribe(run: (value: T) => void): () => void;
}

/** A view as a store: the view opens with the first subscriber and closes after the last. */
export interface ViewStore<T> extends Readable<ViewSnapshot<T>> {
  /** The open view, while someone is subscribed. */
  readonly view: LiveView<T> | undefined;
}

/** A store of a live view's snapshots. */
export function viewStore<T = Item>(client: ArcanaClient, graph: string, params?: Params): ViewStore<T>;
export function viewStore<S extends SchemaShape, G extends GraphName<S>>(
  client: TypedClient<S>,
  graph: G,
  params: GraphParams<S, G>,
): ViewStore<GraphItem<S, G>>;
export function viewStore<T>(c: AnyClient, graph: string, params: unknown = {}): ViewStore<any> {
  const client = untyped(c);
  let view: LiveView<T> | undefined;
  let off: (() => void) | undefined;
  const store = sharedStore<ViewSnapshot<T>>(
    () => {
      view = client.view<T>(graph, params as Params);
      off = view.subscribe(store.emit);
    },
    () => {
      off?.();
      view?.close();
      view = undefined;
      off = undefined;
    },
    () => view?.snapshot,
  );
  return {
    get view() {
      return view;
    },
    subscribe: store.subscribe,
  };
}

/**
 * A store over a source that `open` starts with the first subscriber and
 * `close` stops after the last; `current` is its state while open and
 * `undefined` while closed. The source calls `emit` at once (views and
 * windows do): that first call reaches the first subscriber too, later ones
 * get `current()`.
 */
function sharedStore<S>(
  open: () => void,
  close: () => void,
  current: () => S | undefined,
): Readable<S> & { emit(s: S): void } {
  const runs = new Set<(s: S) => void>();
  const emit = (s: S) => {
    for (const r of [...runs]) r(s);
  };
  return {
    emit,
    subscribe(run) {
      runs.add(run);
      const now = current();
      if (now === undefined) open();
      else run(now);
      return () => {
        if (!runs.delete(run) || runs.size > 0) return;
        close();
      };
    },
  };
}

/** The state of a mutation store. */
export interface MutationSnapshot<D> {
  pending: boolean;
  error: ArcanaError | undefined;
  data: D | undefined;
}

/** A mutation as a store of its state, with `mutate` to run it. */
export interface MutationStore<D, P = Params> extends Readable<MutationSnapshot<D>> {
  /** Runs it; resolves with `undefined` on failure (see the store's `error`), never rejects. */
  mutate(params?: P, options?: MutateOptions): Promise<MutationResult<D> | undefined>;
  /** Runs it; rejects with the ArcanaError on failure. */
  mutateAsync(params?: P, options?: MutateOptions): Promise<MutationResult<D>>;
}

/** A store for one named mutation. */
export function mutationStore<D = Record<string, FieldValue>>(client: ArcanaClient, mutation: string): MutationStore<D>;
export function mutationStore<S extends SchemaShape, M extends MutationName<S>>(
  client: TypedClient<S>,
  mutation: M,
): MutationStore<MutationData<S, M>, MutationParams<S, M>>;
export function mutationStore<D>(c: AnyClient, mutation: string): MutationStore<D> {
  const client = untyped(c);
  const runs = new Set<(s: MutationSnapshot<D>) => void>();
  let state: MutationSnapshot<D> = { pending: false, error: undefined, data: undefined };
  let running = 0;
  const set = (next: Partial<MutationSnapshot<D>>) => {
    state = { ...state, ...next };
    for (const r of [...runs]) r(state);
  };
  const mutateAsync = async (params: Params = {}, options?: MutateOptions) => {
    running++;
    set({ pending: true });
    try {
      const r = await client.mutate<D>(mutation, params, options);
      set({ pending: --running > 0, data: r.data, error: undefined });
      return r;
    } catch (err) {
      set({ pending: --running > 0, error: err as ArcanaError });
      throw err;
    }
  };
  return {
    subscribe(run) {
      runs.add(run);
      run(state);
      return () => void runs.delete(run);
    },
    mutateAsync,
    mutate: (params, options) => mutateAsync(params, options).catch(() => undefined),
  };
}

/** A window as a store: the window opens with the first subscriber and closes after the last. */
export interface WindowStore<T> extends Readable<WindowSnapshot<T>> {
  /** See `WindowView.loadMore`; resolves with the new state, or `undefined` when it failed (see `error`) or nobody is subscribed. */
  loadMore(n: number): Promise<WindowSnapshot<T> | undefined>;
  /** See `WindowView.loadPrevious`. */
  loadPrevious(n: number): Promise<WindowSnapshot<T> | undefined>;
  /** See `WindowView.reanchor`. */
  reanchor(cursor: readonly ParamValue[], options?: ReanchorOptions): Promise<WindowSnapshot<T> | undefined>;
  /** The open window, while someone is subscribed (for `cursorOf`, `until`, ...). */
  readonly handle: WindowView<T> | undefined;
}

/**
 * A store of a live window over an ordered graph (see `client.window`). A
 * failed move shows in the store's `error`; the rows stay those of the last
 * window. The window starts where `options` place it each time it opens.
 */
export function windowStore<T = Item>(
  client: ArcanaClient,
  graph: string,
  params?: Params,
  options?: WindowOptions,
): WindowStore<T>;
export function windowStore<S extends SchemaShape, G extends GraphName<S>>(
  client: TypedClient<S>,
  graph: G,
  params: GraphParams<S, G>,
  options?: WindowOptions,
): WindowStore<GraphItem<S, G>>;
export function windowStore<T>(
  c: AnyClient,
  graph: string,
  params: unknown = {},
  options: WindowOptions = {},
): WindowStore<any> {
  const client = untyped(c);
  // Checked now: bad options throw where the store is made.
  const spec = windowSpec(options);
  let state: WindowSnapshot<T> = emptyWindow(spec);
  const held = holdWindow<T>(() => {
    const snap = held.snapshot();
    if (!snap) return;
    state = snap;
    store.emit(state);
  });
  const store = sharedStore<WindowSnapshot<T>>(
    () => held.hold(client.window<T>(graph, params as Params, spec)),
    held.close,
    () => (held.handle ? state : undefined),
  );
  return {
    get handle() {
      return held.handle ?? undefined;
    },
    subscribe: store.subscribe,
    ...held.moves,
  };
}

/** A row id as `rowStore` takes it: the cache's string, or the number a field holds. */
export type RowId = string | number | bigint;

/**
 * A store of one row from the client's shared cache, live: it changes when
 * any view brings the row, changes it (optimistic changes included) or lets
 * go of it. `undefined` while no open view reaches the row: the store reads
 * the cache and subscribes to nothing itself.
 */
export function rowStore<T extends object = Fields>(c: AnyClient, table: string, id: RowId): Readable<T | undefined> {
  const cache = untyped(c).cache;
  const key = String(id);
  return {
    subscribe(run) {
      let last = cache.get(table, key) as T | undefined;
      run(last);
      return cache.watch(table, key, () => {
        const next = cache.get(table, key) as T | undefined;
        if (next === last) return;
        last = next;
        run(next);
      });
    },
  };
}

/**
 * A store of the connection's status (`connecting`, `open`, `reconnecting`,
 * `failed`, ...) with its error, and every open view of the client with its
 * status (`connecting` while loading, `live`, `stale`, `error`) and error.
 */
export function statusStore(c: AnyClient): Readable<ClientStatusSnapshot> {
  const client = untyped(c);
  return {
    subscribe(run) {
      let last = clientStatus(client);
      run(last);
      return onClientStatus(client, () => {
        const next = clientStatus(client);
        if (next === last) return;
        last = next;
        run(next);
      });
    },
  };
}

export { EMPTY as emptySnapshot };
