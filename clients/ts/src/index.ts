// @arcana/client: transport-neutral core. Use "@arcana/client/node" or
// "@arcana/client/web" for ready-made transports.
export { ArcanaClient } from "./client.js";
export type {
  BackoffOptions,
  ClientOptions,
  ClientStatus,
  FrameCounts,
  MutateOptions,
  MutationResult,
  OptimisticTx,
} from "./client.js";
export { LiveView, applyRefOps, clientStatus, onClientStatus, unescapeField } from "./view.js";
export type {
  ClientStatusSnapshot,
  Item,
  OpenViewStatus,
  StatusSource,
  SyncInfo,
  ViewSnapshot,
  ViewStatus,
  WindowEdgesState,
} from "./view.js";
export { WindowView } from "./window-view.js";
export type { ReanchorOptions, WindowSnapshot } from "./window-view.js";
export { sameWindow, toPbWindow, windowSpec } from "./window.js";
export type { Direction, WindowOptions, WindowSpec } from "./window.js";
export { SnapshotParts } from "./parts.js";
export { RowCache, rowKey, splitKey } from "./cache.js";
export type { Fields } from "./cache.js";
export { ArcanaError, Code, codeName } from "./errors.js";
export type { CodeName } from "./errors.js";
export { IndexedDbStore, MemoryStore } from "./persist.js";
export type { PersistStore, PersistedState, PersistedView, PersistWrite } from "./persist.js";
export { typed } from "./typed.js";
export type {
  AnyClient,
  GraphItem,
  GraphName,
  GraphParams,
  MutationData,
  MutationName,
  MutationParams,
  SchemaShape,
  TypedClient,
  Untyped,
} from "./typed.js";
export { fromFields, fromValue, parseJson, stringifyJson, toParams, toValue, val } from "./values.js";
export type { DecodeOptions, FieldValue, JsonValue, ParamValue, Params } from "./values.js";
export type { SessionMode, TokenSource } from "./session.js";
export * as pb from "./pb.js";
