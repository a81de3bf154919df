// Offline stores in Node.js: gRPC over HTTP/2 and a SQLite file (sql.js).
/// <reference types="node" />
import { createGrpcTransport } from "@connectrpc/connect-node";
import { OfflineStore, type OfflineStoreOptions } from "./store.js";
import { SqlJsStorage } from "./sqljs.js";

export * from "./index.js";
export { SqlJsStorage } from "./sqljs.js";

export interface NodeOfflineOptions extends Omit<OfflineStoreOptions, "transport" | "storage"> {
  /** The server, e.g. "http://127.0.0.1:50051". */
  baseUrl: string;
  /** The SQLite file the store keeps its copy in (created when missing). */
  file: string;
}

/** Opens (or creates) an offline store in a SQLite file, syncing over gRPC. */
export async function openNodeOfflineStore(opts: NodeOfflineOptions): Promise<OfflineStore> {
  const { baseUrl, file, ...rest } = opts;
  const transport = createGrpcTransport({ baseUrl, pingIntervalMs: 10_000, pingTimeoutMs: 10_000 });
  const storage = await SqlJsStorage.open(file);
  return OfflineStore.open({ ...rest, transport, storage, platform: rest.platform ?? "node" });
}
