// Errors with a gRPC status code.
import { ConnectError } from "@connectrpc/connect";

/** gRPC status codes, by the numbers the server sends. */
export const Code = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

export type CodeName = keyof typeof Code;

const NAMES: Record<number, CodeName> = Object.fromEntries(
  Object.entries(Code).map(([k, v]) => [v, k as CodeName]),
);

/** The name of a gRPC status code ("NOT_FOUND" for 5). */
export function codeName(code: number): CodeName | "UNKNOWN" {
  return NAMES[code] ?? "UNKNOWN";
}

/**
 * A failed request or a failed view. `code` is the gRPC status code
 * (see {@link Code}); `rawMessage` is the server's message without the prefix.
 */
export class ArcanaError extends Error {
  override readonly name = "ArcanaError";
  readonly code: number;
  readonly rawMessage: string;

  constructor(code: number, message: string, options?: { cause?: unknown }) {
    super(`[${codeName(code)}] ${message}`, options);
    this.code = code;
    this.rawMessage = message;
  }

  /** The name of the status code, e.g. "INVALID_ARGUMENT". */
  get codeName(): CodeName | "UNKNOWN" {
    return codeName(this.code);
  }

  /** Wraps anything thrown by a transport, keeping the status code. */
  static from(err: unknown): ArcanaError {
    if (err instanceof ArcanaError) return err;
    if (err instanceof ConnectError) {
      // Connect's Code enum uses the gRPC numbers.
      return new ArcanaError(err.code, err.rawMessage, { cause: err });
    }
    if (err instanceof Error && err.name === "AbortError") {
      return new ArcanaError(Code.CANCELLED, err.message, { cause: err });
    }
    const message = err instanceof Error ? err.message : String(err);
    return new ArcanaError(Code.UNKNOWN, message, { cause: err });
  }
}

/** Whether a failure of a session is worth retrying by reconnecting. */
export function isRetryable(err: ArcanaError): boolean {
  switch (err.code) {
    case Code.UNAUTHENTICATED:
    case Code.PERMISSION_DENIED:
    case Code.UNIMPLEMENTED:
    case Code.INVALID_ARGUMENT:
      return false;
    default:
      return true;
  }
}
