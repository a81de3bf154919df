// Browser entry point: grpc-web, with OpenSession plus unary calls.
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { ArcanaClient, type ClientOptions } from "./client.js";

export * from "./index.js";

export interface WebClientOptions extends Omit<ClientOptions, "transport" | "session"> {
  /** The server, e.g. "http://127.0.0.1:50051". */
  baseUrl: string;
}

/** A client for browsers over grpc-web. */
export function createWebClient(opts: WebClientOptions): ArcanaClient {
  const transport = createGrpcWebTransport({ baseUrl: opts.baseUrl });
  return new ArcanaClient({ ...opts, transport, session: "stream" });
}
