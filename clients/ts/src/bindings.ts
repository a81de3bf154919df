// What the React, Vue and Svelte bindings share.
import type { MutateOptions } from "./client.js";
import type { Params } from "./values.js";
import type { ViewSnapshot } from "./view.js";

/** The snapshot shown before a view exists (no graph yet). */
export const EMPTY: ViewSnapshot<never> = Object.freeze({
  items: Object.freeze([]) as readonly never[],
  total: undefined,
  status: "connecting" as const,
  error: undefined,
  epoch: undefined,
  version: 0n,
});

/** A key that changes exactly when the params' values change. */
export function paramsKey(params: Params): string {
  return JSON.stringify(
    Object.keys(params)
      .sort()
      .map((k) => {
        const v = params[k];
        return [k, typeof v, typeof v === "object" ? JSON.stringify(v, bigintSafe) : String(v)];
      }),
  );
}

function bigintSafe(_k: string, v: unknown): unknown {
  return typeof v === "bigint" ? `${v}n` : v;
}

/** Options of a mutation run from a hook or store. */
export type RunOptions = MutateOptions;
