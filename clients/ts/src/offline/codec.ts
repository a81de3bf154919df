// Byte encodings shared by the storage backends: row values as a Row
// message, outbox entries as a RowIntent, table specs as a Capabilities
// message, so that every kind of Value survives a round trip exactly.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  CapabilitiesResponseSchema,
  RowIntentSchema,
  type SyncTableSpec,
} from "../gen/arcana/v1/offline_pb.js";
import { RowSchema, type Value } from "../gen/arcana/v1/value_pb.js";
import type { OutboxEntry } from "./storage.js";

export function encodeValues(values: Record<string, Value>): Uint8Array {
  return toBinary(RowSchema, create(RowSchema, { fields: values }));
}

export function decodeValues(b: Uint8Array): Record<string, Value> {
  return fromBinary(RowSchema, b).fields;
}

export function encodeIntent(e: OutboxEntry): Uint8Array {
  return toBinary(
    RowIntentSchema,
    create(RowIntentSchema, {
      table: e.table,
      op: e.op,
      values: e.values,
      baseVersion: e.baseVersion,
      clientTimeUnixMs: e.clientTimeMs,
    }),
  );
}

export function decodeIntent(seq: number, id: string, bundleId: bigint, b: Uint8Array): OutboxEntry {
  const i = fromBinary(RowIntentSchema, b);
  return {
    seq,
    id,
    bundleId,
    table: i.table,
    op: i.op,
    values: i.values,
    baseVersion: i.baseVersion,
    clientTimeMs: i.clientTimeUnixMs,
  };
}

export function encodeTables(tables: SyncTableSpec[]): Uint8Array {
  return toBinary(CapabilitiesResponseSchema, create(CapabilitiesResponseSchema, { tables }));
}

export function decodeTables(b: Uint8Array): SyncTableSpec[] {
  return fromBinary(CapabilitiesResponseSchema, b).tables;
}
