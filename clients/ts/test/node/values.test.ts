// The one conversion between arcana.v1.Value and JS values, and the forms
// built on it (view keys, row id texts, SQL columns, offline encoding).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { pb } from "../../src/index.js";
import { SyncTableSpecSchema } from "../../src/gen/arcana/v1/offline_pb.js";
import { type FieldValue, type ParamValue, fromValue, toValue, val, valueAs, valueKey, valueText } from "../../src/values.js";
import { sqlValue } from "../../src/offline/sqljs.js";
import { rowId } from "../../src/offline/state.js";
import { encodeRow } from "../../src/offline/values.js";
import { ArcanaError, Code } from "../../src/errors.js";

const MAX_INT64 = 2n ** 63n - 1n;
const MIN_INT64 = -(2n ** 63n);
const BEYOND_2_53 = 2n ** 53n + 1n;
const UUID = "0b0e6c4e-1c1a-4b8e-9f0e-3f2a1d4c5b6a";

/** One Value of every kind, with what it decodes to. */
const kinds: { kind: string; value: pb.Value; decoded: FieldValue }[] = [
  { kind: "null", value: val.null(), decoded: null },
  { kind: "bool", value: val.bool(true), decoded: true },
  { kind: "bool", value: val.bool(false), decoded: false },
  { kind: "int", value: val.int(0), decoded: 0n },
  { kind: "int", value: val.int(MAX_INT64), decoded: MAX_INT64 },
  { kind: "int", value: val.int(MIN_INT64), decoded: MIN_INT64 },
  { kind: "int", value: val.int(BEYOND_2_53), decoded: BEYOND_2_53 },
  { kind: "float", value: val.float(2.5), decoded: 2.5 },
  { kind: "float", value: val.float(-1e-300), decoded: -1e-300 },
  { kind: "string", value: val.string("héllo"), decoded: "héllo" },
  { kind: "string", value: val.string(""), decoded: "" },
  { kind: "numeric", value: val.numeric("12.50"), decoded: "12.50" },
  { kind: "numeric", value: val.numeric("NaN"), decoded: "NaN" },
  { kind: "numeric", value: val.numeric("123456789012345678901234567890.000001"), decoded: "123456789012345678901234567890.000001" },
  { kind: "timestamp", value: val.timestamp(new Date("2024-02-29T23:59:59.123Z")), decoded: new Date("2024-02-29T23:59:59.123Z") },
  { kind: "timestamp", value: val.timestamp(new Date(-1)), decoded: new Date(-1) },
  { kind: "json", value: val.json({ n: 12345678901234567890n, a: [1, "x", null] }), decoded: { n: 12345678901234567890n, a: [1, "x", null] } },
  { kind: "bytes", value: val.bytes(new Uint8Array([0, 1, 255])), decoded: new Uint8Array([0, 1, 255]) },
  { kind: "uuid", value: val.uuid(UUID), decoded: UUID },
  { kind: "date", value: val.date("2024-02-29"), decoded: "2024-02-29" },
];

describe("value conversion", () => {
  it("decodes every kind", () => {
    for (const { kind, value, decoded } of kinds) {
      assert.equal(value.kind.case, kind);
      assert.deepEqual(fromValue(value), decoded, kind);
    }
    assert.equal(fromValue(undefined), null);
    assert.equal(fromValue(create(pb.ValueSchema, {})), null, "a Value without a kind is null");
    assert.equal(fromValue(val.json({ a: 1 }), { json: "text" }), '{"a":1}');
  });

  it("round-trips every kind through its decoded value and kind", () => {
    for (const { kind, value, decoded } of kinds) {
      const again = valueAs(kind, decoded);
      assert.ok(again, kind);
      assert.deepEqual(again, value, `${kind} ${String(decoded)}`);
      assert.deepEqual(fromValue(again), decoded);
    }
  });

  it("infers the kind of plain values", () => {
    const inferred: [ParamValue, string, FieldValue][] = [
      [null, "null", null],
      [undefined, "null", null],
      [true, "bool", true],
      [3, "int", 3n],
      [-0, "int", 0n],
      [Number.MAX_SAFE_INTEGER, "int", BigInt(Number.MAX_SAFE_INTEGER)],
      [2 ** 53, "float", 2 ** 53], // not exact as a number, so not an int
      [2.5, "float", 2.5],
      [BEYOND_2_53, "int", BEYOND_2_53],
      ["12.50", "string", "12.50"],
      [new Date(1500), "timestamp", new Date(1500)],
      [new Uint8Array([7]), "bytes", new Uint8Array([7])],
      [{ a: [1, { b: null }] }, "json", { a: [1, { b: null }] }],
      [[1, 2], "json", [1, 2]],
    ];
    for (const [plain, kind, decoded] of inferred) {
      const v = toValue(plain);
      assert.equal(v.kind.case, kind, String(plain));
      assert.deepEqual(fromValue(v), decoded, String(plain));
    }
    const explicit = val.numeric("1");
    assert.equal(toValue(explicit), explicit, "a Value is sent as it is");
  });

  it("encodes by kind where a plain value could mean several", () => {
    assert.deepEqual(valueAs("int", "-9223372036854775808"), val.int(MIN_INT64));
    assert.deepEqual(valueAs("int", MAX_INT64), val.int(MAX_INT64));
    assert.equal(valueAs("int", 2 ** 53), undefined, "a number beyond 2^53 may have lost digits");
    assert.equal(valueAs("int", "1.5"), undefined);
    assert.equal(valueAs("int", 1.5), undefined);
    assert.deepEqual(valueAs("float", 3), val.float(3));
    assert.deepEqual(valueAs("float", 3n), val.float(3));
    assert.deepEqual(valueAs("numeric", "0.10"), val.numeric("0.10"), "numeric text is kept to the digit");
    assert.deepEqual(valueAs("numeric", 12), val.numeric("12"));
    assert.deepEqual(valueAs("numeric", BEYOND_2_53), val.numeric("9007199254740993"));
    assert.equal(valueAs("numeric", true), undefined);
    assert.deepEqual(valueAs("timestamp", "2024-01-01T00:00:00Z"), val.timestamp(new Date(Date.UTC(2024, 0, 1))));
    assert.deepEqual(valueAs("timestamp", 0), val.timestamp(new Date(0)));
    assert.equal(valueAs("timestamp", true), undefined);
    assert.deepEqual(valueAs("date", new Date(Date.UTC(2024, 1, 29, 23))), val.date("2024-02-29"));
    assert.equal(valueAs("date", 20240229), undefined);
    assert.deepEqual(valueAs("uuid", UUID.toUpperCase()), val.uuid(UUID), "uuids are lower-cased");
    assert.equal(valueAs("uuid", 1), undefined);
    assert.equal(valueAs("bytes", "AQI="), undefined);
    assert.equal(valueAs("bool", 1), undefined);
    assert.deepEqual(valueAs("json", "x"), val.json("x"), "a string is a JSON string");
    assert.deepEqual(valueAs("string", 5), val.string("5"));
    assert.deepEqual(valueAs("some-new-kind", 5), val.string("5"), "unknown kinds are text");
    assert.deepEqual(valueAs("int", null), val.null());
    const explicit = val.string("as sent");
    assert.equal(valueAs("int", explicit), explicit);
  });

  it("gives values their text", () => {
    const texts: [pb.Value | undefined, string][] = [
      [undefined, ""],
      [val.null(), ""],
      [val.bytes(new Uint8Array([1])), ""],
      [val.bool(false), "false"],
      [val.int(MIN_INT64), "-9223372036854775808"],
      [val.int(BEYOND_2_53), "9007199254740993"],
      [val.float(0.1), "0.1"],
      [val.float(1e21), "1e+21"],
      [val.string("a b"), "a b"],
      [val.numeric("12.50"), "12.50"],
      [val.json({ a: 1 }), '{"a":1}'],
      [val.uuid(UUID), UUID],
      [val.date("2024-02-29"), "2024-02-29"],
      [create(pb.ValueSchema, { kind: { case: "timestamp", value: { seconds: 1n, nanos: 999_999_999 } } }), "1970-01-01T00:00:01.999Z"],
    ];
    for (const [v, text] of texts) assert.equal(valueText(v), text);
  });

  it("keys params by kind and value, in a form that does not change", () => {
    const keys: [ParamValue, string][] = [
      [1, "int:1"],
      [MAX_INT64, "int:9223372036854775807"],
      [1.5, "float:1.5"],
      [Number.NaN, "float:null"],
      ["1", "string:1"],
      [true, "bool:true"],
      [null, "null:0"],
      [new Date(1500), "ts:1.500000000"],
      [new Uint8Array([1, 2]), "bytes:1,2"],
      [{ a: 1n }, 'json:{"a":1}'],
      [val.numeric("1.50"), "numeric:1.50"],
      [val.uuid(UUID), `uuid:${UUID}`],
      [val.date("2024-01-01"), "date:2024-01-01"],
      [create(pb.ValueSchema, {}), "none"],
    ];
    for (const [v, key] of keys) assert.equal(valueKey(v), key);
  });
});

describe("offline forms of values", () => {
  it("stores values in SQL columns by their SQLite type", () => {
    const cells: [pb.Value | undefined, unknown][] = [
      [undefined, null],
      [val.null(), null],
      [val.bool(true), 1],
      [val.bool(false), 0],
      [val.int(42), 42],
      [val.int(BigInt(Number.MAX_SAFE_INTEGER)), Number.MAX_SAFE_INTEGER],
      [val.int(BEYOND_2_53), "9007199254740993"],
      [val.int(-BEYOND_2_53), "-9007199254740993"],
      [val.float(2.5), 2.5],
      [val.bytes(new Uint8Array([1, 2])), new Uint8Array([1, 2])],
      [val.numeric("1.50"), "1.50"],
      [val.json({ big: 12345678901234567890n }), '{"big":12345678901234567890}'],
      [val.uuid(UUID), UUID],
      [val.date("2024-02-29"), "2024-02-29"],
      [val.timestamp(new Date("2024-02-29T12:00:00.5Z")), "2024-02-29T12:00:00.500Z"],
    ];
    for (const [v, cell] of cells) assert.deepEqual(sqlValue(v), cell);
  });

  it("makes row ids from key texts and encodes rows by column kind", () => {
    const spec = create(SyncTableSpecSchema, {
      name: "t",
      key: ["id", "at"],
      columns: [
        { name: "id", kind: "int", key: true },
        { name: "at", kind: "timestamp", key: true },
        { name: "price", kind: "numeric" },
      ],
    });
    const row = encodeRow(spec, { id: "9007199254740993", at: 0, price: 10, skipped: undefined });
    assert.deepEqual(row, { id: val.int(BEYOND_2_53), at: val.timestamp(new Date(0)), price: val.numeric("10") });
    assert.equal(rowId(spec, row), JSON.stringify(["9007199254740993", "1970-01-01T00:00:00.000Z"]));
    assert.throws(() => rowId(spec, { id: val.int(1), at: val.null() }), (e: ArcanaError) => e.code === Code.INVALID_ARGUMENT);
    assert.throws(() => encodeRow(spec, { id: 1.5 }), (e: ArcanaError) => e.code === Code.INVALID_ARGUMENT && /t\.id is int/.test(e.message));
    assert.throws(() => encodeRow(spec, { nope: 1 }), (e: ArcanaError) => e.code === Code.INVALID_ARGUMENT);
  });
});
