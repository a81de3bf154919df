// Node.js entry point: gRPC over HTTP/2 with one bidirectional Connect stream.
/// <reference types="node" />
import { readFileSync } from "node:fs";
import type { SecureClientSessionOptions } from "node:http2";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ArcanaClient, type ClientOptions } from "./client.js";

export * from "./index.js";

export interface NodeClientOptions extends Omit<ClientOptions, "transport" | "session"> {
  /** The server, e.g. "http://127.0.0.1:50051". */
  baseUrl: string;
  /** "bidi" (default) or "stream" (OpenSession plus unary calls). */
  session?: ClientOptions["session"];
  /** TLS settings for an "https://" baseUrl; without them the system's CAs are trusted. */
  tls?: NodeTlsOptions;
}

/** How the Node client checks a server that serves TLS, and proves itself to one that requires mutual TLS. */
export interface NodeTlsOptions {
  /** A file of PEM CA certificates to trust instead of the system's. */
  caFile?: string;
  /** PEM CA certificates to trust, given directly. */
  ca?: string | Uint8Array;
  /** A PEM client certificate file, for servers with server.tls.client_ca. */
  certFile?: string;
  /** The client certificate's PEM key file. */
  keyFile?: string;
  /** The name checked against the server's certificate, when not the baseUrl's host. */
  serverName?: string;
  /** Accepts any server certificate: encryption without authentication. Development only. */
  insecureSkipVerify?: boolean;
}

function tlsOptions(t: NodeTlsOptions): SecureClientSessionOptions {
  const read = (f: string, what: string) => {
    try {
      return readFileSync(f);
    } catch (e) {
      throw new Error(`arcana: reading the TLS ${what} ${f}: ${(e as Error).message}`);
    }
  };
  const o: SecureClientSessionOptions = {};
  if (t.caFile !== undefined) o.ca = read(t.caFile, "CA file");
  if (t.ca !== undefined) o.ca = typeof t.ca === "string" ? t.ca : Buffer.from(t.ca);
  if (t.certFile !== undefined) o.cert = read(t.certFile, "certificate file");
  if (t.keyFile !== undefined) o.key = read(t.keyFile, "key file");
  if (t.serverName !== undefined) o.servername = t.serverName;
  if (t.insecureSkipVerify) o.rejectUnauthorized = false;
  return o;
}

/** A client for Node.js over gRPC (HTTP/2). */
export function createNodeClient(opts: NodeClientOptions): ArcanaClient {
  const transport = createGrpcTransport({
    baseUrl: opts.baseUrl,
    nodeOptions: opts.tls ? tlsOptions(opts.tls) : undefined,
    // HTTP/2 keepalive notices a dead connection even while no call is active.
    pingIntervalMs: 10_000,
    pingTimeoutMs: 10_000,
  });
  return new ArcanaClient({ ...opts, transport, session: opts.session ?? "bidi" });
}
