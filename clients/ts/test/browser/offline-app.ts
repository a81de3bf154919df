// A page holding an offline store in IndexedDB, synced over grpc-web. The
// browser test drives it through `window.notes`.
import { type OfflineStore, openWebOfflineStore } from "../../src/offline/web.js";

const q = new URLSearchParams(location.search);

interface Notes {
  store: OfflineStore;
  sync(): Promise<string>;
  add(id: number, body: string): Promise<void>;
  edit(id: string, body: string): Promise<void>;
  list(): { id: string; body: string; pending: boolean }[];
  pending(): number;
  clientId(): string;
  start(): void;
  status(): string;
}

async function main() {
  const store = await openWebOfflineStore({
    baseUrl: q.get("server")!,
    token: q.get("token") ?? undefined,
    database: "notes",
    appVersion: "1.2.0",
  });
  const notes: Notes = {
    store,
    // "ok", or the failure's message: the test calls it online and offline.
    sync: () => store.sync().then(
      () => "ok",
      (e: Error) => e.message,
    ),
    add: async (id, body) => {
      await store.insert("offline_notes", { id, workspace_id: "acme", body });
    },
    edit: (id, body) => store.update("offline_notes", id, { body }),
    list: () =>
      store
        .rows("offline_notes")
        .map((r) => ({ id: r.id, body: String(r.values.body), pending: r.pending }))
        .sort((a, b) => Number(a.id) - Number(b.id)),
    pending: () => store.pendingCount(),
    clientId: () => store.clientId,
    start: () => store.start(),
    status: () => store.status,
  };
  (window as unknown as { notes: Notes }).notes = notes;
  const status = document.getElementById("status")!;
  status.textContent = "opened";
}

main().catch((e: Error) => {
  document.getElementById("status")!.textContent = `error: ${e.message}`;
});
