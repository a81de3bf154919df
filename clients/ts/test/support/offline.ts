// A throwaway server with OfflineService: `arcana demo` provides PostgreSQL
// (and the workspaces), a notes table is added to it, and a second server
// (`arcana serve`) replicates that table to devices.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { OfflineService } from "../../src/gen/arcana/v1/offline_pb.js";
import { type DemoServer, freePort, repoRoot, startDemo } from "./server.js";

export interface OfflineServer {
  baseUrl: string;
  pgUrl: string;
  /** Runs SQL on the database directly. */
  sql(text: string, params?: unknown[]): Promise<pg.QueryResult>;
  /** Stops the offline server only (the database stays), e.g. to test being offline. */
  pause(): Promise<void>;
  /** Starts the offline server again on the same port. */
  resume(): Promise<void>;
  stop(): Promise<void>;
}

const CONFIG = (pgUrl: string, listen: string) => `
[server]
listen = "${listen}"

[database]
url = "${pgUrl}"

[[auth.tokens]]
token = "dev-alice"
user = "alice"
workspace = "acme"
role = "member"
permissions = ["tasks:read", "tasks:write"]

[[auth.tokens]]
token = "dev-bob"
user = "bob"
workspace = "acme"
role = "member"
permissions = ["tasks:read", "tasks:write"]

[[auth.tokens]]
token = "dev-carol"
user = "carol"
workspace = "globex"
role = "member"
permissions = ["tasks:read", "tasks:write"]

[offline]
min_app_version = "1.0.0"
# Short history, pruned often: a device that falls behind must snapshot.
retention_max_rows = 5
retention_interval_ms = 200
# Small chunks: snapshots take several, so one can break in the middle.
snapshot_chunk_rows = 2
# Small bundles and chunks: a few writes already take several of each.
max_push_rows = 5
max_chunk_rows = 2

[[offline.tables]]
table = "offline_notes"
scope = "workspace"
push = "scope"
conflict = "reject"

[[offline.tables]]
table = "offline_prefs"
scope = "workspace"
push = "scope"
conflict = "last_writer_wins"
`;

export async function startOfflineServer(): Promise<OfflineServer> {
  const demo: DemoServer = await startDemo();
  const db = new pg.Client({ connectionString: demo.pgUrl });
  await db.connect();
  await db.query(`CREATE TABLE IF NOT EXISTS offline_notes (
    id bigint PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces(id),
    body text NOT NULL,
    done boolean NOT NULL DEFAULT false,
    due_at timestamptz
  )`);
  await db.query(`CREATE TABLE IF NOT EXISTS offline_prefs (
    id bigint PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces(id),
    value text NOT NULL
  )`);
  const dir = mkdtempSync(join(tmpdir(), "arcana-offline-"));
  const port = await freePort();
  const config = join(dir, "arcana.toml");
  writeFileSync(config, CONFIG(demo.pgUrl, `127.0.0.1:${port}`));
  const baseUrl = `http://127.0.0.1:${port}`;
  const bin = process.env.ARCANA_BIN ?? resolve(repoRoot(), "target/debug/arcana");
  let child: ChildProcess | undefined;
  let log = "";

  const start = async () => {
    log = "";
    const c = spawn(bin, ["serve", "--config", config], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
    });
    c.stdout!.on("data", (b: Buffer) => (log += b.toString()));
    c.stderr!.on("data", (b: Buffer) => (log += b.toString()));
    child = c;
    const rpc = createClient(OfflineService, createGrpcTransport({ baseUrl }));
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (c.exitCode !== null) throw new Error(`arcana serve exited (${c.exitCode}):\n${log}`);
      try {
        await rpc.capabilities({}, { headers: { authorization: "Bearer dev-alice" }, timeoutMs: 2000 });
        return;
      } catch (e) {
        if (Date.now() > deadline) throw new Error(`arcana serve not ready after 60 s: ${String(e)}\n${log}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  };
  const halt = async () => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null) return;
    const exited = new Promise<void>((r) => c.once("exit", () => r()));
    c.kill("SIGTERM");
    const t = setTimeout(() => c.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(t);
  };
  try {
    await start();
  } catch (e) {
    await halt();
    await db.end();
    await demo.stop();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return {
    baseUrl,
    pgUrl: demo.pgUrl,
    sql: (text, params) => db.query(text, params),
    pause: halt,
    resume: start,
    async stop() {
      await halt();
      await db.end();
      await demo.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Waits until `check` holds, polling; fails with `what` after the timeout. */
export async function eventually(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
