// Node.js entry point: gRPC over HTTP/2 with one bidirectional Connect stream.
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ArcanaClient, type ClientOptions } from "./client.js";

export * from "./index.js";

export interface NodeClientOptions extends Omit<ClientOptions, "transport" | "session"> {
  /** The server, e.g. "http://127.0.0.1:50051". */
  baseUrl: string;
  /** "bidi" (default) or "stream" (OpenSession plus unary calls). */
  session?: ClientOptions["session"];
}

/** A client for Node.js over gRPC (HTTP/2). */
export function createNodeClient(opts: NodeClientOptions): ArcanaClient {
  const transport = createGrpcTransport({
    baseUrl: opts.baseUrl,
    // HTTP/2 keepalive notices a dead connection even while no call is active.
    pingIntervalMs: 10_000,
    pingTimeoutMs: 10_000,
  });
  return new ArcanaClient({ ...opts, transport, session: opts.session ?? "bidi" });
}
