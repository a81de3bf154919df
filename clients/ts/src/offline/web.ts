// Offline stores in browsers: grpc-web and IndexedDB.
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { IndexedDbOfflineStorage } from "./indexeddb.js";
import { OfflineStore, type OfflineStoreOptions } from "./store.js";

export * from "./index.js";

export interface WebOfflineOptions extends Omit<OfflineStoreOptions, "transport" | "storage" | "clientStreaming"> {
  /** The server, e.g. "https://api.example.com". */
  baseUrl: string;
  /** The IndexedDB database name (default "arcana-offline"). */
  database?: string;
}

/** Opens (or creates) an offline store in IndexedDB, syncing over grpc-web. */
export async function openWebOfflineStore(opts: WebOfflineOptions): Promise<OfflineStore> {
  const { baseUrl, database, ...rest } = opts;
  const transport = createGrpcWebTransport({ baseUrl });
  const storage = await IndexedDbOfflineStorage.open(database);
  // Browsers cannot stream a request body: each bundle goes as one chunk.
  return OfflineStore.open({ ...rest, transport, storage, clientStreaming: false, platform: rest.platform ?? "web" });
}
