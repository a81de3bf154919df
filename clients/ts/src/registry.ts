// The client's open views: by key (graph, params and window, so that equal
// requests share a view) and by the server's view id (which frames name).
import { type Params, valueKey } from "./values.js";
import type { LiveView } from "./view.js";
import { type WindowSpec, windowKey } from "./window.js";

/** The key of a view: its graph and params (in any order), and its window if any. */
export function viewKey(graph: string, params: Params, window?: WindowSpec): string {
  const entries = Object.entries(params)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => [k, valueKey(v)]);
  const key = `${graph}\u0000${JSON.stringify(entries)}`;
  return window ? `${key}\u0000${windowKey(window)}` : key;
}

export class ViewRegistry {
  /** Views by key. */
  readonly byKey = new Map<string, LiveView<any>>();
  /** Views by server view id; two param spellings may name one server view. */
  private readonly ids = new Map<string, Set<LiveView<any>>>();

  /** The views that show server view `id`. */
  withId(id: string): ReadonlySet<LiveView<any>> | undefined {
    return this.ids.get(id);
  }

  /** Whether any view shows server view `id`. */
  hasId(id: string): boolean {
    return this.ids.has(id);
  }

  bind(v: LiveView<any>, id: string): void {
    if (v.id === id) return;
    this.unbind(v);
    v.id = id;
    // The server named this id after the window the view holds now.
    v.origin = v.key;
    let set = this.ids.get(id);
    if (!set) this.ids.set(id, (set = new Set()));
    set.add(v);
  }

  /** Forgets a view's id; true when no other view uses it any more. */
  unbind(v: LiveView<any>): boolean {
    if (!v.id) return false;
    const set = this.ids.get(v.id);
    if (!set || !set.delete(v)) return false;
    if (set.size > 0) return false;
    this.ids.delete(v.id);
    return true;
  }

  clear(): void {
    this.byKey.clear();
    this.ids.clear();
  }
}
