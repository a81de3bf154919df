// Offline sync: a local copy of the synced tables, an outbox of local
// writes, and the push/pull loop that keeps both in step with the server.
export { OfflineStore, UpgradeRequiredError } from "./store.js";
export type { OfflineRow, OfflineStatus, OfflineStoreOptions, RefusedWrite } from "./store.js";
export type { Conflict, Resolution } from "./state.js";
export { rowId } from "./state.js";
export { MemoryStorage } from "./storage.js";
export type { OfflineStorage, OutboxEntry, StorageBatch, StoredRow, StoredState } from "./storage.js";
export { IndexedDbOfflineStorage } from "./indexeddb.js";
