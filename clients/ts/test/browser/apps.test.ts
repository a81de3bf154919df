// Tiny React, Vue and Svelte apps, each built by Vite, run in headless
// Chromium against a real server: live data, mutations, a failed mutation
// that must not go unhandled, (Vue, with IndexedDB) an offline start that
// shows persisted data at once and catches up with diffs after a reload, and
// in each framework a hooks page: a row from the cache (useRow / rowStore),
// the client's and every view's status (useStatus / statusStore) and a
// window (useWindow / windowStore), each following writes made in PostgreSQL.
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
import pg from "pg";
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

function url(app: string, extra = "", project = 2): string {
  return `${webBase}/${app}/?server=${encodeURIComponent(server.baseUrl)}&token=dev-alice&project=${project}${extra}`;
}

async function open(app: string, extra = "", project = 2): Promise<{ page: Page; errors: string[] }> {
  const page = await browser.newPage();
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(url(app, extra, project));
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

/** Runs one query on the demo database. */
async function sql<R extends object = Record<string, unknown>>(text: string, values: unknown[] = []): Promise<R[]> {
  const db = new pg.Client({ connectionString: server.pgUrl });
  await db.connect();
  try {
    return (await db.query(text, values)).rows as R[];
  } finally {
    await db.end();
  }
}

/** Tells the server about a write made behind its back. */
async function notifyTask(id: string): Promise<void> {
  const service = createNodeClient({ baseUrl: server.baseUrl, token: "dev-service" });
  try {
    await service.notify([{ table: "tasks", id }]);
  } finally {
    service.close();
  }
}

/**
 * Waits until the texts of the elements matching `selector` are exactly
 * `want`, in order, or in any order with `anyOrder`.
 */
async function waitForTexts(page: Page, selector: string, want: string[], anyOrder = false): Promise<void> {
  const w = anyOrder ? [...want].sort() : want;
  try {
    await page.waitForFunction(
      ([sel, w, sort]) => {
        const got = Array.from(document.querySelectorAll(sel), (e) => e.textContent ?? "");
        return JSON.stringify(sort ? got.sort() : got) === w;
      },
      [selector, JSON.stringify(w), anyOrder] as const,
      { timeout: 15_000 },
    );
  } catch (err) {
    const got = await page.locator(selector).allTextContents();
    throw new Error(`${selector}: wanted ${JSON.stringify(want)}, page shows ${JSON.stringify(got)}`, { cause: err });
  }
}

const HOOK_NAMES = { react: "useRow, useStatus, useWindow", vue: "useRow, useStatus, useWindow", svelte: "rowStore, statusStore, windowStore" };

APPS.forEach((app, n) => {
  it(`${app}: ${HOOK_NAMES[app]} follow writes made in PostgreSQL`, async () => {
    // A project of its own, so the window's rows are known.
    const project = 10 + n;
    await sql("INSERT INTO projects (id, workspace_id, name, owner_id) VALUES ($1, 'acme', 'Hooks', 'alice')", [project]);
    const ids = await sql<{ id: string }>(
      `INSERT INTO tasks (workspace_id, project_id, title, position)
       VALUES ('acme', $1, 'First ' || $2, 1), ('acme', $1, 'Second ' || $2, 2), ('acme', $1, 'Third ' || $2, 3)
       RETURNING id::text`,
      [project, app],
    );
    const rowId = ids[1]!.id;
    const titles = async (limit: number) =>
      (
        await sql<{ title: string }>(
          "SELECT title FROM tasks WHERE project_id = $1 ORDER BY position, id LIMIT $2",
          [project, limit],
        )
      ).map((r) => r.title);
    const title = async () => (await sql<{ title: string }>("SELECT title FROM tasks WHERE id = $1", [rowId]))[0]?.title;

    const { page, errors } = await open(app, `&hooks=1&row=${rowId}`, project);
    // Status: the connection, and each view with its own status and error.
    await waitForTexts(page, "#conn", ["open"]);
    await waitForTexts(page, "#views li", ["project_tasks live", "no_such_graph error NOT_FOUND", "task_window live"], true);

    // The row as the database holds it, then a rename made in SQL.
    await waitForTexts(page, "#row", [(await title())!]);
    const renamed = `Renamed in SQL for ${app} at ${Date.now()}`;
    await sql("UPDATE tasks SET title = $1 WHERE id = $2", [renamed, rowId]);
    await notifyTask(rowId);
    assert.equal(await title(), renamed);
    await waitForTexts(page, "#row", [renamed]);

    // The window: its first two rows, then two more (only one is left), then one.
    await waitForTexts(page, "#window li", await titles(2));
    assert.equal(await page.locator("#has-after").innerText(), "true");
    await page.click("#more");
    await waitForTexts(page, "#window li", await titles(4));
    assert.equal((await titles(4)).length, 3);
    await waitForTexts(page, "#has-after", ["false"]);
    // Re-anchored to one row (React and Vue: new options; Svelte: reanchor).
    await page.click("#one");
    await waitForTexts(page, "#window li", await titles(1));
    await waitForTexts(page, "#has-after", ["true"]);

    // The connection drops: the status says so, and the views are stale, until it is back.
    const offline = `${server.baseUrl}/**`;
    await page.route(offline, (r) => r.abort());
    await page.evaluate(() => (window as unknown as { arcana: ArcanaClient }).arcana.dropSession());
    await waitForTexts(page, "#conn", ["reconnecting"]);
    const stale = ["project_tasks stale UNAVAILABLE", "no_such_graph error NOT_FOUND", "task_window stale UNAVAILABLE"];
    await waitForTexts(page, "#views li", stale, true);
    await page.unroute(offline);
    await waitForTexts(page, "#conn", ["open"]);
    await waitForTexts(page, "#views li", ["project_tasks live", "no_such_graph error NOT_FOUND", "task_window live"], true);

    // Deleted in SQL: no view reaches the row any more, so it is absent.
    await sql("DELETE FROM tasks WHERE id = $1", [rowId]);
    await notifyTask(rowId);
    await waitForTexts(page, "#row", ["absent"]);
    await waitForTexts(page, "#window li", await titles(1));

    assert.deepEqual(await rejections(page), []);
    assert.deepEqual(errors, []);
    await page.close();
  });
});
