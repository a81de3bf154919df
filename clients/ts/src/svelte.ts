// Svelte bindings: readable stores for views and mutations. They follow the
// store contract (subscribe calls back at once, returns the unsubscriber), so
// `$tasks` works in components, with runes or without.
import type { ArcanaClient, MutateOptions, MutationResult } from "./client.js";
import { EMPTY } from "./bindings.js";
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
import type { Item, LiveView, ViewSnapshot } from "./view.js";

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
  const runs = new Set<(s: ViewSnapshot<T>) => void>();
  let view: LiveView<T> | undefined;
  let off: (() => void) | undefined;
  return {
    get view() {
      return view;
    },
    subscribe(run) {
      runs.add(run);
      if (!view) {
        view = client.view<T>(graph, params as Params);
        // The view calls back at once: that first call reaches `run` too.
        off = view.subscribe((s) => {
          for (const r of [...runs]) r(s);
        });
      } else {
        run(view.snapshot);
      }
      return () => {
        if (!runs.delete(run) || runs.size > 0) return;
        off?.();
        view?.close();
        view = undefined;
        off = undefined;
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

export { EMPTY as emptySnapshot };
