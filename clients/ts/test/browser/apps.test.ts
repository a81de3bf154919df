// Tiny React, Vue and Svelte apps, each built by Vite, run in headless
// Chromium against a real server: live data, mutations, a failed mutation
// that must not go unhandled, and (Vue, with IndexedDB) an offline start that
// shows persisted data at once and catches up with diffs after a reload.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { type Server, createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, extname, resolve } from "node:path";
import { after, before, it } from "node:test";
import { fileURLToPath } from "node:url";
import { svelte } from "@sveltejs/vite-plugin-svelte";
import vue from "@vitejs/plugin-vue";
import { type BrowserContext, type Page, chromium } from "playwright-core";
import { build } from "vite";
import { type ArcanaClient, createNodeClient } from "../../src/node.js";
import { type DemoServer, startDemo } from "../support/server.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../.."); // clients/ts
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const APPS = ["react", "vue", "svelte"] as const;

let server: DemoServer;
let web: Server;
let webBase: string;
let browser: BrowserContext;
let out: string;
let profile: string;
let node: ArcanaClient;

before(async () => {
  server = await startDemo();
  node = createNodeClient({ baseUrl: server.baseUrl, token: "dev-alice" });
  out = mkdtempSync(resolve(tmpdir(), "arcana-apps-"));
  for (const app of APPS) {
    await build({
      root: resolve(root, "test/apps", app),
      base: `/${app}/`,
      logLevel: "warn",
      configFile: false,
      plugins: app === "vue" ? [vue()] : app === "svelte" ? [svelte()] : [],
      resolve: {
        alias: [{ find: /^@arcana\/client(\/(.*))?$/, replacement: resolve(root, "src") + "/$2" }],
      },
      esbuild: app === "react" ? { jsx: "automatic" } : undefined,
      build: { outDir: resolve(out, app), emptyOutDir: true, minify: false, target: "es2022" },
    });
  }
  web = createServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    const file = resolve(out, "." + (path.endsWith("/") ? path + "index.html" : path));
    let body: Buffer;
    try {
      body = readFileSync(file);
    } catch {
      res.writeHead(404).end();
      return;
    }
    const type = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css" }[extname(file)] ?? "text/plain";
    res.writeHead(200, { "content-type": type }).end(body);
  });
  await new Promise<void>((r) => web.listen(0, "127.0.0.1", r));
  webBase = `http://localhost:${(web.address() as { port: number }).port}`;
  profile = mkdtempSync(resolve(tmpdir(), "arcana-chromium-"));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
  });
});

after(async () => {
  await browser?.close();
  node?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
  if (out) rmSync(out, { recursive: true, force: true });
  await new Promise<void>((r) => (web ? web.close(() => r()) : r()));
  await server?.stop();
});

function url(app: string, extra = ""): string {
  return `${webBase}/${app}/?server=${encodeURIComponent(server.baseUrl)}&token=dev-alice&project=2${extra}`;
}

async function open(app: string, extra = ""): Promise<{ page: Page; errors: string[] }> {
  const page = await browser.newPage();
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(url(app, extra));
  return { page, errors };
}

const rejections = (page: Page) => page.evaluate(() => (window as unknown as { rejections: string[] }).rejections);

it("React: provider, Suspense, and a failed mutation that is not an unhandled rejection", async () => {
  const { page, errors } = await open("react");
  await page.waitForSelector("#status:text('live')", { timeout: 20_000 });
  // Suspense held the first render until the rows were there.
  assert.equal(await page.locator("#first-render").innerText(), "true");
  assert.ok((await page.locator("#tasks li").count()) > 0);
  await page.click("#fail");
  await page.waitForSelector("#mutation-error:text('INVALID_ARGUMENT')", { timeout: 10_000 });
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(await rejections(page), []);
  assert.deepEqual(errors, []);
  await page.close();
});

it("Svelte 5: stores with runes show live data and mutations", async () => {
  const { page, errors } = await open("svelte");
  await page.waitForSelector("#status:text('live')", { timeout: 20_000 });
  const n = Number(await page.locator("#count").innerText());
  assert.ok(n > 0);
  await page.fill("#title", "Added from Svelte");
  await page.click("#add");
  await page.waitForSelector('#tasks li:has-text("Added from Svelte")', { timeout: 15_000 });
  assert.equal(Number(await page.locator("#count").innerText()), n + 1);
  assert.deepEqual(await rejections(page), []);
  assert.deepEqual(errors, []);
  await page.close();
});

it("Vue 3 with IndexedDB: persisted data at once, catch-up after a reload, stale while the server is away", async () => {
  // Another subscriber keeps the view (and its history) on the server between page loads.
  const keeper = node.view("project_tasks", { project_id: 2 });
  await keeper.ready();
  const { page, errors } = await open("vue", "&persist=vue");
  await page.waitForSelector("#status:text('live')", { timeout: 20_000 });
  const before = await page.locator("#tasks li").allInnerTexts();
  await page.fill("#title", "Added from Vue");
  await page.click("#add");
  await page.waitForSelector('#tasks li:has-text("Added from Vue")', { timeout: 15_000 });
  await new Promise((r) => setTimeout(r, 300)); // the store writes after 20 ms

  // Ten changes while the page is closed, then a reload.
  await page.goto("about:blank");
  for (let i = 0; i < 10; i++) await node.mutate("create_task", { project_id: 2, title: `Meanwhile ${i}` });
  await page.goto(url("vue", "&persist=vue"));
  await page.waitForSelector('#tasks li:has-text("Meanwhile 9")', { timeout: 20_000 });
  await page.waitForSelector("#status:text('live')", { timeout: 20_000 });
  const sync = await page.evaluate(() => {
    const c = (window as unknown as { arcana: { received: { frames: number }; view(g: string, p: object): any } }).arcana;
    const v = c.view("project_tasks", { project_id: 2n });
    const info = { mode: v.lastSync?.mode, frames: v.lastSync?.frames, received: c.received.frames };
    v.close();
    return info;
  });
  assert.deepEqual(sync, { mode: "catch_up", frames: 10, received: 10 }, "ten diffs, not a snapshot");

  // The server is away: a reload shows the persisted rows at once, marked stale, with the error.
  await page.route(`${server.baseUrl}/**`, (r) => r.abort());
  await page.reload();
  await page.waitForSelector("#status:text('stale')", { timeout: 10_000 });
  const shown = await page.locator("#tasks li").allInnerTexts();
  assert.equal(shown.length, before.length + 11);
  await page.waitForSelector("#error", { timeout: 10_000 });
  await node.mutate("create_task", { project_id: 2, title: "While away" });
  await page.unroute(`${server.baseUrl}/**`);
  // Back: the page converges.
  await page.waitForSelector('#tasks li:has-text("While away")', { timeout: 20_000 });
  await page.waitForSelector("#status:text('live')", { timeout: 20_000 });
  assert.deepEqual(errors, []);
  keeper.close();
  await page.close();
});
