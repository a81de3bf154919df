// What the test apps share: the client from the page's query string.
import { IndexedDbStore } from "@arcana/client";
import { createWebClient } from "@arcana/client/web";

const q = new URLSearchParams(location.search);
export const projectId = BigInt(q.get("project") ?? "1");
/** Set: the page shows the hooks page (rows, status, a window) instead of the task list. */
export const hooksPage = q.has("hooks");
/** The task the hooks page reads with useRow / rowStore. */
export const rowId = q.get("row") ?? "0";
export const client = createWebClient({
  baseUrl: q.get("server")!,
  token: q.get("token") ?? undefined,
  backoff: { initialMs: 100, maxMs: 500 },
  persist: q.has("persist") ? new IndexedDbStore(`arcana-${q.get("persist")}`) : undefined,
  persistDelayMs: 20,
});
// The test reads the client's counters and the views' sync info.
(window as unknown as { arcana: typeof client }).arcana = client;
// The test checks that no promise rejection went unhandled.
const rejections: string[] = [];
(window as unknown as { rejections: string[] }).rejections = rejections;
window.addEventListener("unhandledrejection", (e) => rejections.push(String(e.reason)));
