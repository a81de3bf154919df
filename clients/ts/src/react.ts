// React bindings: a provider for the client, useView (optionally with
// Suspense), useWindow, useMutation, useRow and useStatus.
import {
  type ReactNode,
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useRef,
  useState,
  useSyncExternalStore,
} from "react";
import type { ArcanaClient, MutateOptions, MutationResult } from "./client.js";
import { EMPTY, paramsKey } from "./bindings.js";
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
import { type WindowOptions, windowKey, windowSpec } from "./window.js";
import type { ReanchorOptions, WindowSnapshot, WindowView } from "./window-view.js";
import { emptyWindow, moveRunner, placeAt, windowMoves } from "./window-state.js";

const ClientContext = createContext<AnyClient | null>(null);

/** Makes `client` the one that hooks called without a client use. */
export function ArcanaProvider(props: { client: AnyClient; children?: ReactNode }) {
  return createElement(ClientContext.Provider, { value: props.client }, props.children);
}

/** The client from the nearest `ArcanaProvider`. */
export function useClient(): ArcanaClient {
  const c = useContext(ClientContext);
  if (!c) throw new Error("no Arcana client: wrap the tree in <ArcanaProvider client={...}>");
  return untyped(c);
}

export interface UseViewOptions {
  /**
   * Suspend (throw a promise to the nearest `<Suspense>`) until the view has
   * data, and throw a refused subscription to the nearest error boundary.
   */
  suspense?: boolean;
}

/** How long a view opened by a suspended render is kept for the render that follows. */
const SUSPENSE_HOLD_MS = 10_000;
const suspended = new WeakMap<ArcanaClient, Map<string, LiveView<any>>>();

/** A view held for a while on behalf of a render that may suspend (and so run no effect). */
function heldView(client: ArcanaClient, graph: string, params: Params, key: string): LiveView<any> {
  let m = suspended.get(client);
  if (!m) suspended.set(client, (m = new Map()));
  let v = m.get(key);
  if (!v || v.status === "closed" || v.status === "error") {
    const view = client.view(graph, params);
    m.set(key, view);
    const held = m;
    setTimeout(() => {
      if (held.get(key) === view) held.delete(key);
      view.close();
    }, SUSPENSE_HOLD_MS);
    v = view;
  }
  return v;
}

/**
 * Subscribes to a view while the component is mounted and re-renders on
 * every change. The client comes first or from `ArcanaProvider`; pass `null`
 * as the graph to subscribe to nothing.
 */
export function useView<T = Item>(graph: string | null, params?: Params, options?: UseViewOptions): ViewSnapshot<T>;
export function useView<T = Item>(
  client: ArcanaClient,
  graph: string | null,
  params?: Params,
  options?: UseViewOptions,
): ViewSnapshot<T>;
export function useView<S extends SchemaShape, G extends GraphName<S>>(
  client: TypedClient<S>,
  graph: G,
  params: GraphParams<S, G>,
  options?: UseViewOptions,
): ViewSnapshot<GraphItem<S, G>>;
export function useView<T = Item>(...args: unknown[]): ViewSnapshot<T> {
  const fromContext = typeof args[0] === "string" || args[0] === null;
  const ctx = useContext(ClientContext);
  const [c, graph, params = {}, options = {}] = (fromContext ? [ctx, ...args] : args) as [
    AnyClient | null,
    string | null,
    Params | undefined,
    UseViewOptions | undefined,
  ];
  if (!c) throw new Error("no Arcana client: pass one or wrap the tree in <ArcanaProvider client={...}>");
  const client = untyped(c);
  const key = graph === null ? "" : `${graph}\u0000${paramsKey(params)}`;
  const [view, setView] = useState<LiveView<T> | null>(null);
  const paramsRef = useRef(params);
  paramsRef.current = params;
  let held: LiveView<T> | null = null;
  if (options.suspense && graph !== null && (view === null || view.graph !== graph)) {
    held = heldView(client, graph, params, key);
  }
  const current = view && view.graph === graph ? view : (held ?? view);
  if (options.suspense && current) {
    if (current.status === "error") throw current.error;
    if (current.status === "connecting") {
      throw current.until((s) => s.status !== "connecting").catch(() => undefined);
    }
  }
  useEffect(() => {
    if (graph === null) {
      setView(null);
      return;
    }
    const v = client.view<T>(graph, paramsRef.current);
    setView(v);
    return () => v.close();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [client, key]);
  const subscribe = useCallback(
    (cb: () => void) => (current ? current.subscribe(cb) : () => {}),
    [current],
  );
  const get = useCallback(() => (current ? current.snapshot : (EMPTY as ViewSnapshot<T>)), [current]);
  return useSyncExternalStore(subscribe, get, get);
}

/** A window's state and the calls that move it. */
export interface WindowState<T> extends WindowSnapshot<T> {
  /** See `WindowView.loadMore`; resolves with the new state (never rejects: see `error`). */
  loadMore(n: number): Promise<WindowSnapshot<T> | undefined>;
  /** See `WindowView.loadPrevious`. */
  loadPrevious(n: number): Promise<WindowSnapshot<T> | undefined>;
  /** See `WindowView.reanchor`. */
  reanchor(cursor: readonly ParamValue[], options?: ReanchorOptions): Promise<WindowSnapshot<T> | undefined>;
  /** The handle itself, once mounted (for `cursorOf`, `until`, ...). */
  handle: WindowView<T> | null;
}

/**
 * A live window over an ordered graph while the component is mounted (see
 * `client.window`). The first `options` place the window; when they change
 * later the window re-anchors there (same graph and params), and so do the
 * returned `reanchor`, `loadMore` and `loadPrevious`. A failed move shows in
 * `error` and the rows stay those of the last window.
 */
export function useWindow<T = Item>(graph: string | null, params?: Params, options?: WindowOptions): WindowState<T>;
export function useWindow<S extends SchemaShape, G extends GraphName<S>>(
  client: TypedClient<S>,
  graph: G,
  params: GraphParams<S, G>,
  options?: WindowOptions,
): WindowState<GraphItem<S, G>>;
export function useWindow<T = Item>(
  client: ArcanaClient,
  graph: string | null,
  params?: Params,
  options?: WindowOptions,
): WindowState<T>;
export function useWindow<T = Item>(...args: unknown[]): WindowState<T> {
  const fromContext = typeof args[0] === "string" || args[0] === null;
  const ctx = useContext(ClientContext);
  const [c, graph, params = {}, options = {}] = (fromContext ? [ctx, ...args] : args) as [
    AnyClient | null,
    string | null,
    Params | undefined,
    WindowOptions | undefined,
  ];
  if (!c) throw new Error("no Arcana client: pass one or wrap the tree in <ArcanaProvider client={...}>");
  const client = untyped(c);
  const spec = windowSpec(options);
  const where = windowKey(spec);
  const key = graph === null ? "" : `${graph}\u0000${paramsKey(params)}`;
  const [handle, setHandle] = useState<WindowView<T> | null>(null);
  const [moveError, setMoveError] = useState<ArcanaError | undefined>(undefined);
  const latest = useRef({ params, spec });
  latest.current = { params, spec };
  // The window each handle was last told to be at through `options`.
  const placed = useRef(where);
  useEffect(() => {
    if (graph === null) {
      setHandle(null);
      return;
    }
    const { params: p, spec: w } = latest.current;
    const h = client.window<T>(graph, p, w);
    placed.current = windowKey(w);
    setHandle(h);
    return () => h.close();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [client, key]);
  const run = useMemo(() => moveRunner(() => handle, (_h, error) => setMoveError(error)), [handle]);
  useEffect(() => {
    if (!handle || placed.current === where) return;
    placed.current = where;
    void run(placeAt(latest.current.spec));
  }, [handle, where, run]);
  const subscribe = useCallback((cb: () => void) => (handle ? handle.subscribe(cb) : () => {}), [handle]);
  const empty = useRef(emptyWindow(spec));
  const get = useCallback(
    () => (handle ? handle.snapshot : (empty.current as WindowSnapshot<T>)),
    [handle],
  );
  const snap = useSyncExternalStore(subscribe, get, get);
  const moves = useMemo(() => windowMoves(run), [run]);
  return { ...snap, error: snap.error ?? moveError, ...moves, handle };
}

export interface MutationState<D, P = Params> {
  /**
   * Runs the mutation. Resolves with its result, or with `undefined` when it
   * fails (the error is in `error`): a failure never becomes an unhandled
   * rejection.
   */
  mutate: (params?: P, options?: MutateOptions) => Promise<MutationResult<D> | undefined>;
  /** Like `mutate`, but rejects with the ArcanaError when the mutation fails. */
  mutateAsync: (params?: P, options?: MutateOptions) => Promise<MutationResult<D>>;
  pending: boolean;
  error: ArcanaError | undefined;
  data: D | undefined;
}

/** A named mutation with its pending state, last result and last error. */
export function useMutation<D = Record<string, FieldValue>>(mutation: string): MutationState<D>;
export function useMutation<D = Record<string, FieldValue>>(client: ArcanaClient, mutation: string): MutationState<D>;
export function useMutation<S extends SchemaShape, M extends MutationName<S>>(
  client: TypedClient<S>,
  mutation: M,
): MutationState<MutationData<S, M>, MutationParams<S, M>>;
export function useMutation<D>(...args: unknown[]): MutationState<D> {
  const ctx = useContext(ClientContext);
  const [c, mutation] = (typeof args[0] === "string" ? [ctx, args[0]] : args) as [AnyClient | null, string];
  if (!c) throw new Error("no Arcana client: pass one or wrap the tree in <ArcanaProvider client={...}>");
  const client = untyped(c);
  const [state, setState] = useState<{ pending: number; error?: ArcanaError; data?: D }>({ pending: 0 });
  const mutateAsync = useCallback(
    async (params: Params = {}, options?: MutateOptions) => {
      setState((s) => ({ ...s, pending: s.pending + 1 }));
      try {
        const r = await client.mutate<D>(mutation, params, options);
        setState((s) => ({ pending: s.pending - 1, data: r.data }));
        return r;
      } catch (err) {
        setState((s) => ({ ...s, pending: s.pending - 1, error: err as ArcanaError }));
        throw err;
      }
    },
    [client, mutation],
  );
  const mutate = useCallback(
    (params?: Params, options?: MutateOptions) => mutateAsync(params, options).catch(() => undefined),
    [mutateAsync],
  );
  return { mutate, mutateAsync, pending: state.pending > 0, error: state.error, data: state.data };
}

/** A row id as `useRow` takes it: the cache's string, or the number a field holds. */
export type RowId = string | number | bigint;

/**
 * One row from the client's shared cache, live: the component re-renders
 * when any view brings the row, changes it (optimistic changes included) or
 * lets go of it. `undefined` while no open view reaches the row: `useRow`
 * reads the cache and subscribes to nothing itself. A `null` id reads nothing.
 */
export function useRow<T extends object = Fields>(table: string, id: RowId | null | undefined): T | undefined;
export function useRow<T extends object = Fields>(
  client: AnyClient,
  table: string,
  id: RowId | null | undefined,
): T | undefined;
export function useRow<T extends object = Fields>(...args: unknown[]): T | undefined {
  const fromContext = typeof args[0] === "string";
  const ctx = useContext(ClientContext);
  const [c, table, id] = (fromContext ? [ctx, ...args] : args) as [AnyClient | null, string, RowId | null | undefined];
  if (!c) throw new Error("no Arcana client: pass one or wrap the tree in <ArcanaProvider client={...}>");
  const cache = untyped(c).cache;
  const key = id === null || id === undefined ? null : String(id);
  const subscribe = useCallback(
    (cb: () => void) => (key === null ? () => {} : cache.watch(table, key, cb)),
    [cache, table, key],
  );
  const get = useCallback(
    () => (key === null ? undefined : (cache.get(table, key) as T | undefined)),
    [cache, table, key],
  );
  return useSyncExternalStore(subscribe, get, get);
}

/**
 * The connection's status (`connecting`, `open`, `reconnecting`, `failed`,
 * ...) with its error, and every open view of the client with its status
 * (`connecting` while loading, `live`, `stale`, `error`) and error. The
 * component re-renders when any of them changes.
 */
export function useStatus(client?: AnyClient): ClientStatusSnapshot {
  const ctx = useContext(ClientContext);
  const c = client ?? ctx;
  if (!c) throw new Error("no Arcana client: pass one or wrap the tree in <ArcanaProvider client={...}>");
  const cl = untyped(c);
  const subscribe = useCallback((cb: () => void) => onClientStatus(cl, cb), [cl]);
  const get = useCallback(() => clientStatus(cl), [cl]);
  return useSyncExternalStore(subscribe, get, get);
}
