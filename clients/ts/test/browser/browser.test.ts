// Headless Chromium loads a page that subscribes over grpc-web; a write made
// directly in Postgres (announced with Notify) must show up on the page, and
// diffs missed while the page was cut off come back as one batch.
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { type Server, createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, resolve } from "node:path";
import { after, before, it } from "node:test";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import pg from "pg";
import { type BrowserContext, chromium } from "playwright-core";
import { type ArcanaClient, createNodeClient } from "../../src/node.js";
import { type DemoServer, startDemo } from "../support/server.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../.."); // clients/ts
const artifacts = resolve(root, "artifacts");
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

let server: DemoServer;
let web: Server;
let pageUrl: string;
let browser: BrowserContext;
let profile: string;

before(async () => {
  server = await startDemo();
  const bundle = await build({
    entryPoints: [resolve(root, "test/browser/app.tsx")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    jsx: "automatic",
    write: false,
    define: { "process.env.NODE_ENV": '"development"' },
    logLevel: "silent",
  });
  const js = bundle.outputFiles[0]!.text;
  const html = `<!doctype html><html><head><meta charset="utf-8"><title>Arcana board</title>
<style>body{font-family:sans-serif;margin:2em}li{margin:.3em 0}</style></head>
<body><div id="root"></div><script type="module" src="/app.js"></script></body></html>`;
  web = createServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    if (path === "/app.js") {
      res.writeHead(200, { "content-type": "text/javascript" }).end(js);
    } else if (path === "/") {
      res.writeHead(200, { "content-type": "text/html" }).end(html);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((r) => web.listen(0, "127.0.0.1", r));
  const port = (web.address() as { port: number }).port;
  // localhost vs 127.0.0.1: the page and the API are on different origins.
  pageUrl = `http://localhost:${port}/?server=${encodeURIComponent(server.baseUrl)}&token=dev-alice&project=2`;
  profile = mkdtempSync(resolve(tmpdir(), "arcana-chromium-"));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 900, height: 600 },
  });
});

after(async () => {
  await browser?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
  await new Promise<void>((r) => (web ? web.close(() => r()) : r()));
  await server?.stop();
});

it("a page subscribed over grpc-web shows writes made in Postgres and its own mutations", async () => {
  const page = browser.pages()[0] ?? (await browser.newPage());
  const logs: string[] = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  try {
    await page.goto(pageUrl);
    await page.waitForSelector("#status:text('live')", { timeout: 20_000 });
    const before = await page.locator("#tasks li").allInnerTexts();
    assert.ok(before.some((t) => t.includes("Patch the servers")), before.join("\n"));
    assert.equal(await page.locator("#total").innerText(), String(before.length));

    // Write behind Arcana's back, then tell it.
    const title = `Patched from SQL at ${new Date().toISOString()}`;
    const db = new pg.Client({ connectionString: server.pgUrl });
    await db.connect();
    try {
      const r = await db.query("UPDATE tasks SET title = $1 WHERE id = 6", [title]);
      assert.equal(r.rowCount, 1);
    } finally {
      await db.end();
    }
    const service = createNodeClient({ baseUrl: server.baseUrl, token: "dev-service" });
    try {
      await service.notify([{ table: "tasks", id: "6", columns: ["title"] }]);
    } finally {
      service.close();
    }
    await page.waitForSelector(`#tasks li[data-id="6"]:has-text("${title}")`, { timeout: 15_000 });

    // A mutation from the page (unary Mutate; the diff arrives on the session stream).
    await page.fill("#title", "Added from the browser");
    await page.click("#add");
    await page.waitForSelector('#tasks li:has-text("Added from the browser")', { timeout: 15_000 });
    assert.equal(await page.locator("#total").innerText(), String(before.length + 1));
    const created = await page.locator("#created").innerText();
    assert.match(created, /created #\d+/);

    // Missed diffs come back as one batch on the OpenSession stream. A Node
    // client keeps the view alive while the page is cut off and writes.
    const writer = createNodeClient({ baseUrl: server.baseUrl, token: "dev-alice" });
    try {
      const watcher = writer.view<{ id: bigint; title: string }>("project_tasks", { project_id: 2 });
      await watcher.ready();
      const counts = () => page.evaluate(() => (window as unknown as { arcana: ArcanaClient }).arcana.received);
      const before = await counts();
      const offline = `${server.baseUrl}/**`;
      await page.route(offline, (r) => r.abort());
      await page.evaluate(() => (window as unknown as { arcana: ArcanaClient }).arcana.dropSession());
      await page.waitForSelector("#status:text('stale')", { timeout: 10_000 });
      const id = BigInt(created.replace(/\D/g, ""));
      for (let i = 1; i <= 3; i++) await writer.mutate("update_task", { id, title: `Renamed offline ${i}` });
      await page.unroute(offline);
      await page.waitForSelector(`#version:text-is("${watcher.version}")`, { timeout: 20_000 });
      await page.waitForSelector("#status:text('live')", { timeout: 10_000 });
      const after = await counts();
      assert.equal(after.batches - before.batches, 1, "the catch-up arrived as one batch");
      assert.equal(after.frames - before.frames, 3);
      const shown = await page.locator("#tasks li b").allInnerTexts();
      assert.deepEqual(
        shown,
        watcher.items.map((t) => t.title),
      );
      watcher.close();
    } finally {
      writer.close();
    }

    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: resolve(artifacts, "browser.png"), fullPage: true });
  } catch (err) {
    console.error(logs.join("\n"));
    throw err;
  }
});
