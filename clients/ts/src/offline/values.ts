// Plain JS values to the Value kind a synced column travels as.
import { isMessage } from "@bufbuild/protobuf";
import type { SyncTableSpec } from "../gen/arcana/v1/offline_pb.js";
import { type Value, ValueSchema } from "../gen/arcana/v1/value_pb.js";
import { ArcanaError, Code } from "../errors.js";
import { type JsonValue, type ParamValue, val } from "../values.js";

/** Encodes `v` as the column's kind ("int", "timestamp", ...). */
export function valueForKind(table: string, column: string, kind: string, v: ParamValue): Value {
  if (v === null || v === undefined) return val.null();
  if (isMessage(v, ValueSchema)) return v;
  const bad = (): never => {
    throw new ArcanaError(Code.INVALID_ARGUMENT, `${table}.${column} is ${kind}; got ${typeof v}`);
  };
  switch (kind) {
    case "int":
      if (typeof v === "bigint" || (typeof v === "number" && Number.isSafeInteger(v))) return val.int(v);
      if (typeof v === "string" && /^-?\d+$/.test(v)) return val.int(v);
      return bad();
    case "float":
      if (typeof v === "number" || typeof v === "bigint") return val.float(Number(v));
      return bad();
    case "bool":
      return typeof v === "boolean" ? val.bool(v) : bad();
    case "numeric":
      return typeof v === "string" || typeof v === "number" || typeof v === "bigint" ? val.numeric(v) : bad();
    case "timestamp":
      if (v instanceof Date) return val.timestamp(v);
      if (typeof v === "string" || typeof v === "number") return val.timestamp(new Date(v));
      return bad();
    case "date":
      if (v instanceof Date) return val.date(v.toISOString().slice(0, 10));
      return typeof v === "string" ? val.date(v) : bad();
    case "uuid":
      return typeof v === "string" ? val.uuid(v) : bad();
    case "bytes":
      return v instanceof Uint8Array ? val.bytes(v) : bad();
    case "json":
      return val.json(v as JsonValue);
    default:
      return typeof v === "string" ? val.string(v) : val.string(String(v));
  }
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
