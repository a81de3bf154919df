// Types that `arcana codegen --lang ts` output plugs into: a client whose
// graph names, params, items and mutation results are checked by tsc.
import type { ArcanaClient, MutateOptions, MutationResult } from "./client.js";
import type { FieldValue, Params } from "./values.js";
import type { Item, LiveView } from "./view.js";
import type { WindowOptions } from "./window.js";
import type { WindowView } from "./window-view.js";

/** The shape of the `Schema` interface that codegen writes. */
export interface SchemaShape {
  graphs: object;
  mutations: object;
}

/** What a client knows without codegen: any name, any params. */
export interface Untyped {
  graphs: { [graph: string]: { params: Params; item: Item } };
  mutations: { [mutation: string]: { params: Params; result: Record<string, FieldValue> } };
}

type Get<T, K extends string> = T extends { [k in K]: infer V } ? V : never;

export type GraphName<S extends SchemaShape> = keyof S["graphs"] & string;
export type MutationName<S extends SchemaShape> = keyof S["mutations"] & string;
export type GraphParams<S extends SchemaShape, G extends GraphName<S>> = Get<S["graphs"][G], "params">;
export type GraphItem<S extends SchemaShape, G extends GraphName<S>> = Get<S["graphs"][G], "item">;
export type MutationParams<S extends SchemaShape, M extends MutationName<S>> = Get<S["mutations"][M], "params">;
export type MutationData<S extends SchemaShape, M extends MutationName<S>> = Get<S["mutations"][M], "result">;

/** Params may be left out when every one is optional. */
export type ParamsArg<P> = {} extends P ? [params?: P] : [params: P];

/** An `ArcanaClient` whose `view`, `window` and `mutate` are checked against a codegen `Schema`. */
export type TypedClient<S extends SchemaShape> = Omit<ArcanaClient, "view" | "window" | "mutate"> & {
  /** A live view of a graph the schema names, with the params it declares. */
  view<G extends GraphName<S>>(graph: G, ...params: ParamsArg<GraphParams<S, G>>): LiveView<GraphItem<S, G>>;
  /** A live window over a graph the schema names. */
  window<G extends GraphName<S>>(
    graph: G,
    params: GraphParams<S, G>,
    options?: WindowOptions,
  ): WindowView<GraphItem<S, G>>;
  /** Runs a mutation the schema names; `data` has the type of the row it returns. */
  mutate<M extends MutationName<S>>(
    mutation: M,
    params: MutationParams<S, M>,
    options?: MutateOptions,
  ): Promise<MutationResult<MutationData<S, M>>>;
  /** The untyped client underneath. */
  readonly untyped: ArcanaClient;
};

/** Either kind of client. */
export type AnyClient = ArcanaClient | TypedClient<any>;

/**
 * The same client, typed by a codegen `Schema`:
 * `const client = typed<Schema>(createWebClient({ ... }))`.
 */
export function typed<S extends SchemaShape>(client: ArcanaClient): TypedClient<S> {
  return client as unknown as TypedClient<S>;
}

/** @internal The client underneath a typed or untyped client. */
export function untyped(client: AnyClient): ArcanaClient {
  return client as ArcanaClient;
}
