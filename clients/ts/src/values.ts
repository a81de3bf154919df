// Conversions between arcana.v1.Value and plain JavaScript values.
import { create, isMessage } from "@bufbuild/protobuf";
import { NullValue, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type Value, ValueSchema } from "./gen/arcana/v1/value_pb.js";

/**
 * A decoded field value. int64 columns become `bigint` (exact), floats
 * `number`, numerics their decimal text, timestamps `Date`, json/jsonb the
 * parsed document (integers beyond 2^53 as `bigint`), bytea `Uint8Array`,
 * uuid and date their canonical text.
 */
export type FieldValue =
  | null
  | boolean
  | bigint
  | number
  | string
  | Date
  | Uint8Array
  | JsonValue;

/** A parsed JSON document; integers outside the safe range are `bigint`. */
export type JsonValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | JsonValue[]
  | { [key: string]: JsonValue };

/** What may be passed as a parameter: a plain value or an explicit {@link Value}. */
export type ParamValue =
  | null
  | undefined
  | boolean
  | bigint
  | number
  | string
  | Date
  | Uint8Array
  | Value
  | JsonValue;

export type Params = Record<string, ParamValue>;

export interface DecodeOptions {
  /** How json/jsonb values are returned: parsed (default) or as their text. */
  json?: "parse" | "text";
}

/** Explicit constructors for kinds a plain JS value cannot express. */
export const val = {
  null: (): Value => create(ValueSchema, { kind: { case: "null", value: NullValue.NULL_VALUE } }),
  bool: (b: boolean): Value => create(ValueSchema, { kind: { case: "bool", value: b } }),
  int: (i: number | bigint | string): Value =>
    create(ValueSchema, { kind: { case: "int", value: BigInt(i) } }),
  float: (f: number): Value => create(ValueSchema, { kind: { case: "float", value: f } }),
  string: (s: string): Value => create(ValueSchema, { kind: { case: "string", value: s } }),
  numeric: (s: string | number | bigint): Value =>
    create(ValueSchema, { kind: { case: "numeric", value: String(s) } }),
  timestamp: (d: Date): Value =>
    create(ValueSchema, { kind: { case: "timestamp", value: timestampFromDate(d) } }),
  /** JSON from a document (bigints are written as exact integers) or from its text. */
  json: (doc: JsonValue | { text: string }): Value =>
    create(ValueSchema, {
      kind: {
        case: "json",
        value: isTextWrapper(doc) ? doc.text : stringifyJson(doc),
      },
    }),
  bytes: (b: Uint8Array): Value => create(ValueSchema, { kind: { case: "bytes", value: b } }),
  uuid: (s: string): Value => create(ValueSchema, { kind: { case: "uuid", value: s.toLowerCase() } }),
  date: (s: string): Value => create(ValueSchema, { kind: { case: "date", value: s } }),
};

function isTextWrapper(x: unknown): x is { text: string } {
  return (
    typeof x === "object" &&
    x !== null &&
    !Array.isArray(x) &&
    Object.keys(x).length === 1 &&
    typeof (x as { text?: unknown }).text === "string"
  );
}

/** Encodes one plain value; integers become `int`, other numbers `float`. */
export function toValue(v: ParamValue): Value {
  if (v === null || v === undefined) return val.null();
  if (isMessage(v, ValueSchema)) return v;
  switch (typeof v) {
    case "boolean":
      return val.bool(v);
    case "bigint":
      return val.int(v);
    case "number":
      return Number.isSafeInteger(v) ? val.int(v) : val.float(v);
    case "string":
      return val.string(v);
  }
  if (v instanceof Date) return val.timestamp(v);
  if (v instanceof Uint8Array) return val.bytes(v);
  return val.json(v as JsonValue);
}

/**
 * Encodes `v` as the Value kind `kind` ("int", "timestamp", ... as table
 * specs and the registry name them), converting where the kind says how:
 * digit strings and bigints to `int`, numbers to `numeric` text, text and
 * epoch ms to `timestamp`, a `Date` to a `date`. Undefined when `v` cannot be
 * of that kind. Kinds this client does not know are taken as `string`.
 */
export function valueAs(kind: string, v: ParamValue): Value | undefined {
  if (v === null || v === undefined) return val.null();
  if (isMessage(v, ValueSchema)) return v;
  switch (kind) {
    case "int":
      if (typeof v === "bigint" || (typeof v === "number" && Number.isSafeInteger(v))) return val.int(v);
      return typeof v === "string" && /^-?\d+$/.test(v) ? val.int(v) : undefined;
    case "float":
      return typeof v === "number" || typeof v === "bigint" ? val.float(Number(v)) : undefined;
    case "bool":
      return typeof v === "boolean" ? val.bool(v) : undefined;
    case "numeric":
      return typeof v === "string" || typeof v === "number" || typeof v === "bigint" ? val.numeric(v) : undefined;
    case "timestamp":
      if (v instanceof Date) return val.timestamp(v);
      return typeof v === "string" || typeof v === "number" ? val.timestamp(new Date(v)) : undefined;
    case "date":
      if (v instanceof Date) return val.date(v.toISOString().slice(0, 10));
      return typeof v === "string" ? val.date(v) : undefined;
    case "uuid":
      return typeof v === "string" ? val.uuid(v) : undefined;
    case "bytes":
      return v instanceof Uint8Array ? val.bytes(v) : undefined;
    case "json":
      return val.json(v as JsonValue);
    default:
      return val.string(String(v));
  }
}

/** Encodes a parameter object; `undefined` entries are left out. */
export function toParams(params: Params | undefined): Record<string, Value> {
  const out: Record<string, Value> = {};
  if (!params) return out;
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined) out[k] = toValue(v);
  }
  return out;
}

/** Decodes one value. */
export function fromValue(v: Value | undefined, opts: DecodeOptions = {}): FieldValue {
  if (!v) return null;
  const k = v.kind;
  switch (k.case) {
    case undefined:
    case "null":
      return null;
    case "bool":
    case "int":
    case "float":
    case "string":
    case "numeric":
    case "bytes":
    case "uuid":
    case "date":
      return k.value;
    case "timestamp":
      return timestampDate(k.value);
    case "json":
      return opts.json === "text" ? k.value : parseJson(k.value);
  }
}

/**
 * A value as text, the way row ids carry it: numbers and bools as JS prints
 * them, the text kinds as they are, timestamps in ISO 8601 to the
 * millisecond (truncated). Null and bytes have no text ("").
 */
export function valueText(v: Value | undefined): string {
  const k = v?.kind;
  if (!k?.case || k.case === "null" || k.case === "bytes") return "";
  if (k.case === "timestamp") {
    return new Date(Number(k.value.seconds) * 1000 + Math.floor(k.value.nanos / 1e6)).toISOString();
  }
  return String(k.value);
}

/**
 * A parameter as part of a view's key: the kind with the value, so that
 * values of different kinds never meet. Keys are kept in persist stores, so
 * this text must not change.
 */
export function valueKey(v: ParamValue): string {
  const k = toValue(v).kind;
  if (k.case === undefined) return "none";
  if (k.case === "timestamp") return `ts:${k.value.seconds}.${k.value.nanos}`;
  const x = k.value;
  return `${k.case}:${typeof x === "string" ? x : x instanceof Uint8Array ? String(x) : stringifyJson(x)}`;
}

/** Decodes a field map. */
export function fromFields(
  fields: Record<string, Value> | undefined,
  opts: DecodeOptions = {},
): Record<string, FieldValue> {
  const out: Record<string, FieldValue> = {};
  if (!fields) return out;
  for (const [k, v] of Object.entries(fields)) out[k] = fromValue(v, opts);
  return out;
}

/**
 * Parses JSON text like JSON.parse, except that integers JavaScript numbers
 * cannot hold exactly are returned as `bigint`.
 */
export function parseJson(text: string): JsonValue {
  let i = 0;
  const fail = (what: string): never => {
    throw new SyntaxError(`bad JSON at ${i}: ${what}`);
  };
  const ws = () => {
    while (i < text.length) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) i++;
      else break;
    }
  };
  const value = (): JsonValue => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const obj: Record<string, JsonValue> = {};
      ws();
      if (text[i] === "}") {
        i++;
        return obj;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail("expected a key");
        const key = str();
        ws();
        if (text[i] !== ":") fail("expected ':'");
        i++;
        obj[key] = value();
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "}") {
          i++;
          return obj;
        }
        fail("expected ',' or '}'");
      }
    }
    if (c === "[") {
      i++;
      const arr: JsonValue[] = [];
      ws();
      if (text[i] === "]") {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(value());
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "]") {
          i++;
          return arr;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c === '"') return str();
    if (text.startsWith("true", i)) {
      i += 4;
      return true;
    }
    if (text.startsWith("false", i)) {
      i += 5;
      return false;
    }
    if (text.startsWith("null", i)) {
      i += 4;
      return null;
    }
    return num();
  };
  const str = (): string => {
    // Find the closing quote, then let JSON.parse handle escapes.
    const start = i;
    i++;
    while (i < text.length) {
      const c = text[i];
      if (c === "\\") i += 2;
      else if (c === '"') break;
      else i++;
    }
    if (i >= text.length) fail("unterminated string");
    i++;
    return JSON.parse(text.slice(start, i)) as string;
  };
  const num = (): number | bigint => {
    const m = /^-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
    if (!m) fail("unexpected character");
    const s = m![0];
    i += s.length;
    const n = Number(s);
    if (m![1] === undefined && m![2] === undefined && !Number.isSafeInteger(n)) {
      return BigInt(s);
    }
    return n;
  };
  const out = value();
  ws();
  if (i !== text.length) fail("trailing characters");
  return out;
}

/** JSON.stringify that writes bigints as exact integers. */
export function stringifyJson(doc: JsonValue): string {
  if (doc === null) return "null";
  switch (typeof doc) {
    case "bigint":
      return doc.toString();
    case "number":
    case "boolean":
    case "string":
      return JSON.stringify(doc);
  }
  if (Array.isArray(doc)) return `[${doc.map(stringifyJson).join(",")}]`;
  const parts: string[] = [];
  for (const [k, v] of Object.entries(doc as Record<string, JsonValue>)) {
    if (v === undefined) continue;
    parts.push(`${JSON.stringify(k)}:${stringifyJson(v)}`);
  }
  return `{${parts.join(",")}}`;
}
