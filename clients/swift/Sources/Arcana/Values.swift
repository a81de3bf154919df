import Foundation
import SwiftProtobuf

/// A parameter or field value, as the Arcana protocol types it. Integers are
/// 64-bit, numerics are exact decimal text, JSON is its original text.
public enum ArcanaValue: Sendable, Hashable {
  case null
  case bool(Bool)
  case int(Int64)
  case float(Double)
  case string(String)
  case numeric(String)
  case timestamp(Date)
  case json(String)
  case bytes(Data)
  case uuid(String)
  case date(String)

  /// The protobuf form.
  public var proto: Arcana_V1_Value {
    var v = Arcana_V1_Value()
    switch self {
    case .null: v.kind = .null(.nullValue)
    case .bool(let b): v.kind = .bool(b)
    case .int(let i): v.kind = .int(i)
    case .float(let f): v.kind = .float(f)
    case .string(let s): v.kind = .string(s)
    case .numeric(let s): v.kind = .numeric(s)
    case .timestamp(let d): v.kind = .timestamp(Google_Protobuf_Timestamp(date: d))
    case .json(let s): v.kind = .json(s)
    case .bytes(let b): v.kind = .bytes(b)
    case .uuid(let s): v.kind = .uuid(s)
    case .date(let s): v.kind = .date(s)
    }
    return v
  }

  /// Reads a protobuf value; an unset value reads as null.
  public init(_ v: Arcana_V1_Value) {
    switch v.kind {
    case .none, .null: self = .null
    case .bool(let b): self = .bool(b)
    case .int(let i): self = .int(i)
    case .float(let f): self = .float(f)
    case .string(let s): self = .string(s)
    case .numeric(let s): self = .numeric(s)
    case .timestamp(let t): self = .timestamp(t.date)
    case .json(let s): self = .json(s)
    case .bytes(let b): self = .bytes(b)
    case .uuid(let s): self = .uuid(s)
    case .date(let s): self = .date(s)
    }
  }

  public var intValue: Int64? {
    if case .int(let i) = self { return i }
    return nil
  }

  /// The text of string, numeric, json, uuid and date values.
  public var text: String? {
    switch self {
    case .string(let s), .numeric(let s), .json(let s), .uuid(let s), .date(let s): return s
    default: return nil
    }
  }
}

extension ArcanaValue: ExpressibleByIntegerLiteral, ExpressibleByStringLiteral,
  ExpressibleByBooleanLiteral, ExpressibleByFloatLiteral, ExpressibleByNilLiteral
{
  public init(integerLiteral value: Int64) { self = .int(value) }
  public init(stringLiteral value: String) { self = .string(value) }
  public init(booleanLiteral value: Bool) { self = .bool(value) }
  public init(floatLiteral value: Double) { self = .float(value) }
  public init(nilLiteral: ()) { self = .null }
}

/// Graph and mutation parameters.
public typealias ArcanaParams = [String: ArcanaValue]

extension Dictionary where Key == String, Value == ArcanaValue {
  var proto: [String: Arcana_V1_Value] { mapValues(\.proto) }
}
