// Starts a throwaway `arcana demo` server for a test run.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export interface DemoServer {
  baseUrl: string;
  port: number;
  /** postgres://... of the demo database. */
  pgUrl: string;
  stop(): Promise<void>;
}

const here = dirname(fileURLToPath(import.meta.url));

/** The repository root (the directory holding Cargo.toml). */
export function repoRoot(): string {
  let d = here;
  while (!existsSync(resolve(d, "Cargo.toml"))) {
    const up = dirname(d);
    if (up === d) throw new Error("repository root not found");
    d = up;
  }
  return d;
}

/** A port nothing listens on right now. */
export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

export async function startDemo(): Promise<DemoServer> {
  const bin = process.env.ARCANA_BIN ?? resolve(repoRoot(), "target/debug/arcana");
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run \`cargo build --bin arcana\``);
  const port = await freePort();
  const child: ChildProcess = spawn(bin, ["demo", "--listen", `127.0.0.1:${port}`], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
  });
  let out = "";
  let err = "";
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  const ready = new Promise<{ pgUrl: string }>((res, rej) => {
    let serving = false;
    let pgUrl: string | undefined;
    const check = () => {
      if (serving && pgUrl) res({ pgUrl });
    };
    child.stdout!.on("data", (b: Buffer) => {
      out += b.toString();
      if (out.includes("Arcana demo serving on")) serving = true;
      check();
    });
    child.stderr!.on("data", (b: Buffer) => {
      err += b.toString();
      const m = /PostgreSQL is up at (postgres:\/\/\S+)/.exec(err);
      if (m) pgUrl = m[1];
      check();
    });
    child.once("exit", (code) => rej(new Error(`arcana demo exited (${code}) before serving:\n${out}\n${err}`)));
    setTimeout(() => rej(new Error(`arcana demo not ready after 120 s:\n${out}\n${err}`)), 120_000).unref();
  });
  let r;
  try {
    r = await ready;
  } catch (e) {
    child.kill("SIGTERM");
    throw e;
  }
  return {
    baseUrl: `http://127.0.0.1:${port}`,
    port,
    pgUrl: r.pgUrl,
    async stop() {
      if (child.exitCode !== null) return;
      child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(t);
    },
  };
}
