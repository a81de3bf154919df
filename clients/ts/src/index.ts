// @arcana/client: transport-neutral core. Use "@arcana/client/node" or
// "@arcana/client/web" for ready-made transports.
export { ArcanaClient } from "./client.js";
export type { BackoffOptions, ClientOptions, ClientStatus, FrameCounts, MutationResult } from "./client.js";
export { LiveView, applyRefOps, unescapeField } from "./view.js";
export type { Item, SyncInfo, ViewSnapshot, ViewStatus } from "./view.js";
export { RowCache, rowKey, splitKey } from "./cache.js";
export type { Fields } from "./cache.js";
export { ArcanaError, Code, codeName } from "./errors.js";
export type { CodeName } from "./errors.js";
export { fromFields, fromValue, parseJson, stringifyJson, toParams, toValue, val } from "./values.js";
export type { DecodeOptions, FieldValue, JsonValue, ParamValue, Params } from "./values.js";
export type { SessionMode, TokenSource } from "./session.js";
export * as pb from "./pb.js";
