import GRPCCore

/// A failed Arcana request, with the gRPC status code the server (or the
/// transport) gave.
public struct ArcanaError: Error, Sendable, Hashable, CustomStringConvertible {
  /// The gRPC status code number (5 NotFound, 3 InvalidArgument, 16 Unauthenticated, ...).
  public var code: Int32
  public var message: String
  /// What failed ("subscribe project_tasks", "mutate create_task", ...).
  public var operation: String

  public init(code: Int32, message: String, operation: String = "") {
    self.code = code
    self.message = message
    self.operation = operation
  }

  init(_ e: Arcana_V1_Error, operation: String) {
    self.init(code: e.code, message: e.message, operation: operation)
  }

  init(_ e: RPCError, operation: String) {
    self.init(code: Int32(e.code.rawValue), message: e.message, operation: operation)
  }

  public static let cancelled: Int32 = 1
  public static let invalidArgument: Int32 = 3
  public static let notFound: Int32 = 5
  public static let permissionDenied: Int32 = 7
  public static let resourceExhausted: Int32 = 8
  public static let failedPrecondition: Int32 = 9
  public static let internalError: Int32 = 13
  public static let unavailable: Int32 = 14
  public static let unauthenticated: Int32 = 16

  static func lost(_ operation: String) -> ArcanaError {
    ArcanaError(
      code: unavailable,
      message: "the session ended before the reply arrived; the request may or may not have taken effect",
      operation: operation)
  }

  static func closed(_ operation: String) -> ArcanaError {
    ArcanaError(code: cancelled, message: "the client is closed", operation: operation)
  }

  public var description: String {
    operation.isEmpty
      ? "arcana: code \(code): \(message)" : "arcana: \(operation): code \(code): \(message)"
  }
}
