// Vue 3 bindings: provideArcana, useView and useMutation composables.
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
import type { FieldValue, Params } from "./values.js";
import type { Item, ViewSnapshot } from "./view.js";

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
  const hasClient = typeof args[0] === "object" && args[0] !== null && "view" in args[0];
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
