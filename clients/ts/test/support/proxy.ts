// A TCP proxy that a test can cut, to break a client's connection for real.
import { type Server, type Socket, connect, createServer } from "node:net";

export interface Proxy {
  port: number;
  baseUrl: string;
  /** Destroys every open connection and refuses new ones until `restore()`. */
  cut(): Promise<void>;
  restore(): Promise<void>;
  close(): Promise<void>;
}

export async function startProxy(targetPort: number): Promise<Proxy> {
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let port = 0;
  const listen = () =>
    new Promise<void>((res, rej) => {
      const s = createServer((client) => {
        const upstream = connect(targetPort, "127.0.0.1");
        sockets.add(client);
        sockets.add(upstream);
        const drop = () => {
          client.destroy();
          upstream.destroy();
          sockets.delete(client);
          sockets.delete(upstream);
        };
        client.on("error", drop).on("close", drop);
        upstream.on("error", drop).on("close", drop);
        client.pipe(upstream);
        upstream.pipe(client);
      });
      s.once("error", rej);
      s.listen(port, "127.0.0.1", () => {
        port = (s.address() as { port: number }).port;
        server = s;
        res();
      });
    });
  const stop = () =>
    new Promise<void>((res) => {
      for (const s of sockets) s.destroy();
      sockets.clear();
      if (!server) return res();
      server.close(() => res());
      server = undefined;
    });
  await listen();
  return {
    port,
    baseUrl: `http://127.0.0.1:${port}`,
    cut: stop,
    restore: listen,
    close: stop,
  };
}
