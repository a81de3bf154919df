// Headless Chromium scrolls a list of 10,000 tasks that a React component
// shows through one live window (useWindow, re-anchored as it scrolls, over
// grpc-web). Every list the page rendered must be one whole window: the
// consecutive rows of the slice it was placed at.
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { type Server, createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, resolve } from "node:path";
import { after, before, it } from "node:test";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import pg from "pg";
import { type BrowserContext, type Page, chromium } from "playwright-core";
import { createNodeClient } from "../../src/node.js";
import { type DemoServer, startDemo } from "../support/server.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../.."); // clients/ts
const artifacts = resolve(root, "artifacts");
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const ROWS = 10_000;
const PROJECT = 300;
const ROW = 20;
const LIMIT = 40;

let server: DemoServer;
let web: Server;
let pageUrl: string;
let browser: BrowserContext;
let profile: string;

before(async () => {
  server = await startDemo();
  const db = new pg.Client({ connectionString: server.pgUrl });
  await db.connect();
  try {
    await db.query("INSERT INTO projects (id, workspace_id, name, owner_id) VALUES ($1, 'acme', 'Scrolled', 'alice')", [
      PROJECT,
    ]);
    await db.query(
      `INSERT INTO tasks (workspace_id, project_id, title, position)
       SELECT 'acme', $1, 'Row ' || i, i FROM generate_series(1, $2) AS i`,
      [PROJECT, ROWS],
    );
  } finally {
    await db.end();
  }
  const bundle = await build({
    entryPoints: [resolve(root, "test/browser/window-app.tsx")],
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
  const html = `<!doctype html><html><head><meta charset="utf-8"><title>Arcana window</title></head>
<body><div id="root"></div><script type="module" src="/app.js"></script></body></html>`;
  web = createServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    if (path === "/app.js") res.writeHead(200, { "content-type": "text/javascript" }).end(js);
    else if (path === "/") res.writeHead(200, { "content-type": "text/html" }).end(html);
    else res.writeHead(404).end();
  });
  await new Promise<void>((r) => web.listen(0, "127.0.0.1", r));
  const port = (web.address() as { port: number }).port;
  pageUrl = `http://localhost:${port}/?server=${encodeURIComponent(server.baseUrl)}&token=dev-alice&project=${PROJECT}&rows=${ROWS}`;
  profile = mkdtempSync(resolve(tmpdir(), "arcana-chromium-"));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
    viewport: { width: 700, height: 600 },
  });
});

after(async () => {
  await browser?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
  await new Promise<void>((r) => (web ? web.close(() => r()) : r()));
  await server?.stop();
});

/** Positions 1..N are the rows in order, so the slice at index k holds positions k+1 onwards. */
const slice = (start: number, n = LIMIT) =>
  Array.from({ length: Math.min(n, ROWS - start) }, (_, i) => start + i + 1);

/** Scrolls the list to row `index` and waits until the window settles there. */
async function scrollTo(page: Page, index: number): Promise<number> {
  await page.evaluate((top) => {
    document.getElementById("list")!.scrollTop = top;
  }, index * ROW);
  // The page keeps 5 rows above the first one in view.
  const want = Math.max(0, Math.min(index - 5, ROWS - LIMIT));
  await page.waitForFunction(
    (w) => document.getElementById("start")?.textContent === String(w) && document.getElementById("moving")?.textContent === "false",
    want,
    { timeout: 20_000 },
  );
  return want;
}

async function shownPositions(page: Page): Promise<number[]> {
  return (await page.locator("#list li").evaluateAll((els) => els.map((e) => Number(e.getAttribute("data-pos")))));
}

it("scrolling a 10,000-row list re-anchors one live window, and every render shows a whole slice", async () => {
  const page = browser.pages()[0] ?? (await browser.newPage());
  const logs: string[] = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  try {
    await page.goto(pageUrl);
    await page.waitForSelector("#status:text('live')", { timeout: 20_000 });
    assert.deepEqual(await shownPositions(page), slice(0));
    assert.equal(await page.locator("#before").innerText(), "false");
    assert.equal(await page.locator("#after").innerText(), "true");

    for (const index of [30, 2_000, 5_321, 9_990, 4_000, 700, 0, 7_777]) {
      const start = await scrollTo(page, index);
      assert.deepEqual(await shownPositions(page), slice(start), `the rows shown at row ${index}`);
      const edges = [await page.locator("#before").innerText(), await page.locator("#after").innerText()];
      assert.deepEqual(edges, [String(start > 0), String(start + LIMIT < ROWS)], `edges at row ${index}`);
    }

    // The window stays live where it is: a rename inside it shows at once.
    const writer = createNodeClient({ baseUrl: server.baseUrl, token: "dev-alice" });
    try {
      const db = new pg.Client({ connectionString: server.pgUrl });
      await db.connect();
      const r = await db.query("SELECT id FROM tasks WHERE project_id = $1 AND position = 7780", [PROJECT]);
      await db.end();
      await writer.mutate("update_task", { id: BigInt(r.rows[0].id), title: "Renamed while shown" });
    } finally {
      writer.close();
    }
    await page.waitForSelector('#list li[data-pos="7780"]:has-text("Renamed while shown")', { timeout: 15_000 });

    // Every list rendered along the way was one whole window.
    const renders = await page.evaluate(
      () => (window as unknown as { renders: { start: number; positions: number[] }[] }).renders,
    );
    assert.ok(renders.length >= 9, `${renders.length} renders`);
    for (const r of renders) {
      assert.deepEqual(r.positions, slice(r.start), `a render at index ${r.start} showed ${r.positions.slice(0, 3)}...`);
    }
    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: resolve(artifacts, "window.png") });
  } catch (err) {
    console.error(logs.join("\n"));
    throw err;
  }
});
