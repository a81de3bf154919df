// Plain JS values to the Value kind a synced column travels as.
import type { SyncTableSpec } from "../gen/arcana/v1/offline_pb.js";
import type { Value } from "../gen/arcana/v1/value_pb.js";
import { ArcanaError, Code } from "../errors.js";
import { type ParamValue, valueAs } from "../values.js";

/** Encodes `v` as the column's kind ("int", "timestamp", ...). */
export function valueForKind(table: string, column: string, kind: string, v: ParamValue): Value {
  const out = valueAs(kind, v);
  if (!out) throw new ArcanaError(Code.INVALID_ARGUMENT, `${table}.${column} is ${kind}; got ${typeof v}`);
  return out;
}

/** Encodes a row's plain values by the table's column kinds. */
export function encodeRow(spec: SyncTableSpec, values: Record<string, ParamValue>): Record<string, Value> {
  const kinds = new Map(spec.columns.map((c) => [c.name, c.kind]));
  const out: Record<string, Value> = {};
  for (const [k, v] of Object.entries(values)) {
    if (v === undefined) continue;
    const kind = kinds.get(k);
    if (kind === undefined) throw new ArcanaError(Code.INVALID_ARGUMENT, `${spec.name} has no column ${k}`);
    out[k] = valueForKind(spec.name, k, kind, v);
  }
  return out;
}
