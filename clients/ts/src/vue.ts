// Vue 3 bindings: provideArcana, and the useView, useWindow, useMutation,
// useRow and useStatus composables.
import {
  type InjectionKey,
  type MaybeRefOrGetter,
  type ShallowRef,
  inject,
  onScopeDispose,
  provide,
  shallowRef,
  toValue,
  watch,
} from "vue";
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
import { type ClientStatusSnapshot, type Item, type ViewSnapshot, clientStatus, onClientStatus } from "./view.js";
import { type WindowOptions, windowKey, windowSpec } from "./window.js";
import type { ReanchorOptions, WindowSnapshot, WindowView } from "./window-view.js";
import { emptyWindow, holdWindow, placeAt } from "./window-state.js";

const CLIENT: InjectionKey<AnyClient> = Symbol("arcana client");

/** Makes `client` the one composables called without a client use (in this component and below). */
export function provideArcana(client: AnyClient): void {
  provide(CLIENT, client);
}

/** The client provided by `provideArcana` (or `app.provide`) above. */
export function useClient(): ArcanaClient {
  const c = inject(CLIENT, null);
  if (!c) throw new Error("no Arcana client: call provideArcana(client) in a parent component");
  return untyped(c);
}

/** Install as a plugin: `app.use(arcanaPlugin(client))`. */
export function arcanaPlugin(client: AnyClient) {
  return { install: (app: { provide: (k: InjectionKey<AnyClient>, v: AnyClient) => unknown }) => app.provide(CLIENT, client) };
}

/** Whether an argument is a client (graphs and ids may be refs: objects too). */
function isClient(a: unknown): boolean {
  return typeof a === "object" && a !== null && "view" in a && "cache" in a;
}

/**
 * A view's current snapshot as a shallow ref, updated on every change. Graph
 * and params may be refs or getters: the view follows them. The view closes
 * with the component (or effect scope). A `null` graph subscribes to nothing.
 */
export function useView<T = Item>(
  graph: MaybeRefOrGetter<string | null>,
  params?: MaybeRefOrGetter<Params>,
): ShallowRef<ViewSnapshot<T>>;
export function useView<T = Item>(
  client: ArcanaClient,
  graph: MaybeRefOrGetter<string | null>,
  params?: MaybeRefOrGetter<Params>,
): ShallowRef<ViewSnapshot<T>>;
export function useView<S extends SchemaShape, G extends GraphName<S>>(
  client: TypedClient<S>,
  graph: G,
  params: MaybeRefOrGetter<GraphParams<S, G>>,
): ShallowRef<ViewSnapshot<GraphItem<S, G>>>;
export function useView<T = Item>(...args: unknown[]): ShallowRef<ViewSnapshot<T>> {
  const hasClient = isClient(args[0]);
  const client = hasClient ? untyped(args[0] as AnyClient) : useClient();
  const [graph, params] = (hasClient ? args.slice(1) : args) as [
    MaybeRefOrGetter<string | null>,
    MaybeRefOrGetter<Params> | undefined,
  ];
  const state = shallowRef<ViewSnapshot<T>>(EMPTY as ViewSnapshot<T>);
  let stop: (() => void) | undefined;
  const open = (g: string | null, p: Params) => {
    stop?.();
    stop = undefined;
    if (g === null) {
      state.value = EMPTY as ViewSnapshot<T>;
      return;
    }
    const v = client.view<T>(g, p);
    const off = v.subscribe((s) => (state.value = s));
    stop = () => {
      off();
      v.close();
    };
  };
  watch(
    () => {
      const g = toValue(graph);
      const p = toValue(params) ?? {};
      return [g, p, g === null ? "" : paramsKey(p)] as const;
    },
    ([g, p], old) => {
      if (old && old[0] === g && old[2] === paramsKey(p)) return;
      open(g, p);
    },
    { immediate: true },
  );
  onScopeDispose(() => stop?.());
  return state;
}

export interface MutationRefs<D, P = Params> {
  /**
   * Runs the mutation. Resolves with its result, or with `undefined` when it
   * fails (the error is in `error`): a failure never becomes an unhandled rejection.
   */
  mutate: (params?: P, options?: MutateOptions) => Promise<MutationResult<D> | undefined>;
  /** Like `mutate`, but rejects with the ArcanaError on failure. */
  mutateAsync: (params?: P, options?: MutateOptions) => Promise<MutationResult<D>>;
  pending: ShallowRef<boolean>;
  error: ShallowRef<ArcanaError | undefined>;
  data: ShallowRef<D | undefined>;
}

/** A named mutation with refs for its pending state, last result and last error. */
export function useMutation<D = Record<string, FieldValue>>(mutation: string): MutationRefs<D>;
export function useMutation<D = Record<string, FieldValue>>(client: ArcanaClient, mutation: string): MutationRefs<D>;
export function useMutation<S extends SchemaShape, M extends MutationName<S>>(
  client: TypedClient<S>,
  mutation: M,
): MutationRefs<MutationData<S, M>, MutationParams<S, M>>;
export function useMutation<D>(...args: unknown[]): MutationRefs<D> {
  const client = typeof args[0] === "string" ? useClient() : untyped(args[0] as AnyClient);
  const mutation = (typeof args[0] === "string" ? args[0] : args[1]) as string;
  const pending = shallowRef(false);
  const error = shallowRef<ArcanaError | undefined>();
  const data = shallowRef<D | undefined>();
  let running = 0;
  const mutateAsync = async (params: Params = {}, options?: MutateOptions) => {
    running++;
    pending.value = true;
    try {
      const r = await client.mutate<D>(mutation, params, options);
      data.value = r.data;
      error.value = undefined;
      return r;
    } catch (err) {
      error.value = err as ArcanaError;
      throw err;
    } finally {
      pending.value = --running > 0;
    }
  };
  const mutate = (params?: Params, options?: MutateOptions) => mutateAsync(params, options).catch(() => undefined);
  return { mutate, mutateAsync, pending, error, data };
}

/** A window's state and the calls that move it (the value of `useWindow`'s ref). */
export interface WindowState<T> extends WindowSnapshot<T> {
  /** See `WindowView.loadMore`; resolves with the new state (never rejects: see `error`). */
  loadMore(n: number): Promise<WindowSnapshot<T> | undefined>;
  /** See `WindowView.loadPrevious`. */
  loadPrevious(n: number): Promise<WindowSnapshot<T> | undefined>;
  /** See `WindowView.reanchor`. */
  reanchor(cursor: readonly ParamValue[], options?: ReanchorOptions): Promise<WindowSnapshot<T> | undefined>;
  /** The handle itself, while open (for `cursorOf`, `until`, ...). */
  handle: WindowView<T> | null;
}

/**
 * A live window over an ordered graph (see `client.window`) as a shallow ref
 * of its state and the calls that move it: `w.items`, `w.hasAfter`,
 * `w.loadMore(50)` in a template. Graph, params and options may be refs or
 * getters: a new graph or params subscribes anew, new options re-anchor the
 * same window. A failed move shows in `error`; the rows stay those of the
 * last window. The window closes with the component (or effect scope).
 */
export function useWindow<T = Item>(
  graph: MaybeRefOrGetter<string | null>,
  params?: MaybeRefOrGetter<Params>,
  options?: MaybeRefOrGetter<WindowOptions>,
): ShallowRef<WindowState<T>>;
export function useWindow<T = Item>(
  client: ArcanaClient,
  graph: MaybeRefOrGetter<string | null>,
  params?: MaybeRefOrGetter<Params>,
  options?: MaybeRefOrGetter<WindowOptions>,
): ShallowRef<WindowState<T>>;
export function useWindow<S extends SchemaShape, G extends GraphName<S>>(
  client: TypedClient<S>,
  graph: G,
  params: MaybeRefOrGetter<GraphParams<S, G>>,
  options?: MaybeRefOrGetter<WindowOptions>,
): ShallowRef<WindowState<GraphItem<S, G>>>;
export function useWindow<T = Item>(...args: unknown[]): ShallowRef<WindowState<T>> {
  const hasClient = isClient(args[0]);
  const client = hasClient ? untyped(args[0] as AnyClient) : useClient();
  const [graph, params, options] = (hasClient ? args.slice(1) : args) as [
    MaybeRefOrGetter<string | null>,
    MaybeRefOrGetter<Params> | undefined,
    MaybeRefOrGetter<WindowOptions> | undefined,
  ];
  let spec = windowSpec(toValue(options) ?? {});
  // The window the handle was last told to be at through `options`.
  let placed = windowKey(spec);
  const held = holdWindow<T>(publish);
  const state = shallowRef<WindowState<T>>(undefined as unknown as WindowState<T>);
  function publish() {
    const snap = held.snapshot() ?? (emptyWindow(spec) as WindowSnapshot<T>);
    state.value = Object.freeze({ ...snap, ...held.moves, handle: held.handle });
  }
  watch(
    () => {
      const g = toValue(graph);
      const p = toValue(params) ?? {};
      const w = windowSpec(toValue(options) ?? {});
      return [g, p, g === null ? "" : paramsKey(p), w, windowKey(w)] as const;
    },
    ([g, p, key, w, where], old) => {
      spec = w;
      if (!old || old[0] !== g || old[2] !== key) {
        held.close();
        placed = where;
        if (g !== null) held.hold(client.window<T>(g, p, w));
        publish();
      } else if (where !== placed) {
        placed = where;
        void held.run(placeAt(w));
      }
    },
    { immediate: true },
  );
  onScopeDispose(held.close);
  return state;
}

/** A row id as `useRow` takes it: the cache's string, or the number a field holds. */
export type RowId = string | number | bigint;

/**
 * One row from the client's shared cache as a shallow ref, live: updated
 * when any view brings the row, changes it (optimistic changes included) or
 * lets go of it. `undefined` while no open view reaches the row: `useRow`
 * reads the cache and subscribes to nothing itself. Table and id may be refs
 * or getters; a `null` id reads nothing.
 */
export function useRow<T extends object = Fields>(
  table: MaybeRefOrGetter<string>,
  id: MaybeRefOrGetter<RowId | null | undefined>,
): ShallowRef<T | undefined>;
export function useRow<T extends object = Fields>(
  client: AnyClient,
  table: MaybeRefOrGetter<string>,
  id: MaybeRefOrGetter<RowId | null | undefined>,
): ShallowRef<T | undefined>;
export function useRow<T extends object = Fields>(...args: unknown[]): ShallowRef<T | undefined> {
  const hasClient = isClient(args[0]);
  const cache = (hasClient ? untyped(args[0] as AnyClient) : useClient()).cache;
  const [table, id] = (hasClient ? args.slice(1) : args) as [
    MaybeRefOrGetter<string>,
    MaybeRefOrGetter<RowId | null | undefined>,
  ];
  const row = shallowRef<T | undefined>();
  let stop: (() => void) | undefined;
  watch(
    () => {
      const i = toValue(id);
      return [toValue(table), i === null || i === undefined ? null : String(i)] as const;
    },
    ([t, i]) => {
      stop?.();
      stop = undefined;
      const read = () => (row.value = i === null ? undefined : (cache.get(t, i) as T | undefined));
      if (i !== null) stop = cache.watch(t, i, read);
      read();
    },
    { immediate: true },
  );
  onScopeDispose(() => stop?.());
  return row;
}

/**
 * The connection's status (`connecting`, `open`, `reconnecting`, `failed`,
 * ...) with its error, and every open view of the client with its status
 * (`connecting` while loading, `live`, `stale`, `error`) and error, as a
 * shallow ref updated when any of them changes.
 */
export function useStatus(client?: AnyClient): ShallowRef<ClientStatusSnapshot> {
  const c = client ? untyped(client) : useClient();
  const state = shallowRef(clientStatus(c));
  const off = onClientStatus(c, () => (state.value = clientStatus(c)));
  onScopeDispose(off);
  return state;
}
