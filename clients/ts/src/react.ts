// React bindings: useView and useMutation.
import { useCallback, useEffect, useRef, useState, useSyncExternalStore } from "react";
import type { ArcanaClient, MutationResult } from "./client.js";
import type { ArcanaError } from "./errors.js";
import type { FieldValue, Params } from "./values.js";
import type { Item, LiveView, ViewSnapshot } from "./view.js";

const EMPTY: ViewSnapshot<never> = Object.freeze({
  items: Object.freeze([]) as readonly never[],
  total: undefined,
  status: "loading" as const,
  error: undefined,
  epoch: undefined,
  version: 0n,
});

/**
 * Subscribes to a view while the component is mounted and re-renders on
 * every change. Pass `null` as the graph to subscribe to nothing.
 */
export function useView<T = Item>(
  client: ArcanaClient,
  graph: string | null,
  params: Params = {},
): ViewSnapshot<T> {
  const key = graph === null ? "" : `${graph}\u0000${stableKey(params)}`;
  const [view, setView] = useState<LiveView<T> | null>(null);
  const paramsRef = useRef(params);
  paramsRef.current = params;
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
    (cb: () => void) => (view ? view.subscribe(cb) : () => {}),
    [view],
  );
  const get = useCallback(() => (view ? view.snapshot : (EMPTY as ViewSnapshot<T>)), [view]);
  return useSyncExternalStore(subscribe, get, get);
}

export interface MutationState<D> {
  /** Runs the mutation; resolves with its result or rejects with an ArcanaError. */
  mutate: (params?: Params) => Promise<MutationResult<D>>;
  pending: boolean;
  error: ArcanaError | undefined;
  data: D | undefined;
}

/** A named mutation with its pending state, last result and last error. */
export function useMutation<D = Record<string, FieldValue>>(
  client: ArcanaClient,
  mutation: string,
): MutationState<D> {
  const [state, setState] = useState<{ pending: number; error?: ArcanaError; data?: D }>({ pending: 0 });
  const mutate = useCallback(
    async (params: Params = {}) => {
      setState((s) => ({ ...s, pending: s.pending + 1 }));
      try {
        const r = await client.mutate<D>(mutation, params);
        setState((s) => ({ pending: s.pending - 1, data: r.data }));
        return r;
      } catch (err) {
        setState((s) => ({ ...s, pending: s.pending - 1, error: err as ArcanaError }));
        throw err;
      }
    },
    [client, mutation],
  );
  return { mutate, pending: state.pending > 0, error: state.error, data: state.data };
}

function stableKey(params: Params): string {
  return JSON.stringify(
    Object.keys(params)
      .sort()
      .map((k) => [k, String(typeof params[k] === "object" ? JSON.stringify(params[k], bigintSafe) : params[k]), typeof params[k]]),
  );
}

function bigintSafe(_k: string, v: unknown): unknown {
  return typeof v === "bigint" ? `${v}n` : v;
}
