// Headless Chromium holds an offline store in IndexedDB synced over
// grpc-web: it writes while the server is unreachable, the page reloads and
// still has its outbox, and once the server is back it pushes its write and
// sees another device's; then it follows changes live.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { type Server, createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { after, before, it } from "node:test";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { type BrowserContext, type Page, chromium } from "playwright-core";
import { openNodeOfflineStore } from "../../src/offline/node.js";
import { type OfflineServer, startOfflineServer } from "../support/offline.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../.."); // clients/ts
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

let server: OfflineServer;
let web: Server;
let pageUrl: string;
let browser: BrowserContext;
let profile: string;
let dir: string;

before(async () => {
  server = await startOfflineServer();
  dir = mkdtempSync(join(tmpdir(), "arcana-offline-browser-"));
  const bundle = await build({
    entryPoints: [resolve(root, "test/browser/offline-app.ts")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    write: false,
    logLevel: "silent",
  });
  const js = bundle.outputFiles[0]!.text;
  const html = `<!doctype html><html><head><meta charset="utf-8"><title>Offline notes</title></head>
<body><p id="status">loading</p><script type="module" src="/app.js"></script></body></html>`;
  web = createServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    if (path === "/app.js") res.writeHead(200, { "content-type": "text/javascript" }).end(js);
    else if (path === "/") res.writeHead(200, { "content-type": "text/html" }).end(html);
    else res.writeHead(404).end();
  });
  await new Promise<void>((r) => web.listen(0, "127.0.0.1", r));
  const port = (web.address() as { port: number }).port;
  pageUrl = `http://localhost:${port}/?server=${encodeURIComponent(server.baseUrl)}&token=dev-alice`;
  profile = mkdtempSync(resolve(tmpdir(), "arcana-chromium-"));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
  await new Promise<void>((r) => (web ? web.close(() => r()) : r()));
  await server?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

type Notes = {
  sync(): Promise<string>;
  add(id: number, body: string): Promise<void>;
  edit(id: string, body: string): Promise<void>;
  list(): { id: string; body: string; pending: boolean }[];
  pending(): number;
  clientId(): string;
  start(): void;
  status(): string;
};
const notes = (page: Page) => page.evaluateHandle(() => (window as unknown as { notes: Notes }).notes);

async function opened(page: Page) {
  await page.waitForSelector("#status:text('opened')", { timeout: 20_000 });
  return notes(page);
}

it("an IndexedDB store writes offline, keeps its outbox across a reload, then syncs both ways", async () => {
  await server.sql("INSERT INTO offline_notes (id, workspace_id, body) VALUES (200, 'acme', 'seed')");
  const page = browser.pages()[0] ?? (await browser.newPage());
  const logs: string[] = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  const other = await openNodeOfflineStore({ baseUrl: server.baseUrl, token: "dev-bob", file: join(dir, "bob.sqlite"), appVersion: "1.2.0" });
  try {
    await page.goto(pageUrl);
    let n = await opened(page);
    assert.equal(await n.evaluate((x) => x.sync()), "ok");
    assert.deepEqual(await n.evaluate((x) => x.list()), [{ id: "200", body: "seed", pending: false }]);
    const clientId = await n.evaluate((x) => x.clientId());

    // Offline: every request to the server fails.
    const offline = `${server.baseUrl}/**`;
    await page.route(offline, (r) => r.abort());
    await n.evaluate((x) => x.add(201, "written offline in the browser"));
    await n.evaluate((x) => x.edit("200", "seed, edited offline"));
    assert.notEqual(await n.evaluate((x) => x.sync()), "ok");
    assert.equal(await n.evaluate((x) => x.pending()), 2);

    await page.reload();
    n = await opened(page);
    assert.equal(await n.evaluate((x) => x.clientId()), clientId, "the same client id after a reload");
    assert.equal(await n.evaluate((x) => x.pending()), 2, "the outbox survived the reload");
    assert.deepEqual(await n.evaluate((x) => x.list()), [
      { id: "200", body: "seed, edited offline", pending: true },
      { id: "201", body: "written offline in the browser", pending: true },
    ]);

    // Another device writes meanwhile.
    await other.sync();
    await other.insert("offline_notes", { id: 202, workspace_id: "acme", body: "from another device" });
    await other.sync();

    await page.unroute(offline);
    assert.equal(await n.evaluate((x) => x.sync()), "ok");
    assert.equal(await n.evaluate((x) => x.pending()), 0);
    assert.deepEqual(await n.evaluate((x) => x.list()), [
      { id: "200", body: "seed, edited offline", pending: false },
      { id: "201", body: "written offline in the browser", pending: false },
      { id: "202", body: "from another device", pending: false },
    ]);
    const db = await server.sql("SELECT id::text, body FROM offline_notes WHERE id IN (200, 201) ORDER BY id");
    assert.deepEqual(db.rows, [
      { id: "200", body: "seed, edited offline" },
      { id: "201", body: "written offline in the browser" },
    ]);
    await other.sync();
    assert.equal(other.get("offline_notes", "201")?.values.body, "written offline in the browser");

    // Live: the page follows changes over grpc-web and pushes as it writes.
    await n.evaluate((x) => x.start());
    await page.waitForFunction(() => (window as unknown as { notes: Notes }).notes.status() === "live", null, { timeout: 15_000 });
    await server.sql("UPDATE offline_notes SET body = 'changed in psql' WHERE id = 202");
    await page.waitForFunction(
      () => (window as unknown as { notes: Notes }).notes.list().some((r) => r.id === "202" && r.body === "changed in psql"),
      null,
      { timeout: 15_000 },
    );
    await n.evaluate((x) => x.add(203, "pushed live from the page"));
    await page.waitForFunction(() => (window as unknown as { notes: Notes }).notes.pending() === 0, null, { timeout: 15_000 });
    const live = await server.sql("SELECT body FROM offline_notes WHERE id = 203");
    assert.equal(live.rows[0]?.body, "pushed live from the page");
  } catch (err) {
    console.error(logs.join("\n"));
    throw err;
  } finally {
    await other.close();
  }
});
