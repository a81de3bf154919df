// Headless Chromium opens the DevTools page on the demo's admin listener,
// signs in with an admin token, sees a view a Node client subscribed, and
// sees its version move after a write made directly in Postgres.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, resolve } from "node:path";
import { after, before, it } from "node:test";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { type BrowserContext, chromium } from "playwright-core";
import { createNodeClient } from "../../src/node.js";
import { freePort, repoRoot } from "../support/server.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../.."); // clients/ts
const artifacts = resolve(root, "artifacts");
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

interface Demo {
  baseUrl: string;
  adminUrl: string;
  pgUrl: string;
  child: ChildProcess;
  exited: Promise<void>;
}

let demo: Demo;
let browser: BrowserContext;
let profile: string;

/** `arcana demo`, with the admin address it prints. */
async function startDemo(): Promise<Demo> {
  const bin = process.env.ARCANA_BIN ?? resolve(repoRoot(), "target/debug/arcana");
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run \`cargo build --bin arcana\``);
  const port = await freePort();
  const child = spawn(bin, ["demo", "--listen", `127.0.0.1:${port}`, "--admin-listen", "127.0.0.1:0"], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
  });
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  let out = "";
  let err = "";
  const found = await new Promise<{ adminUrl: string; pgUrl: string }>((res, rej) => {
    const check = () => {
      const admin = /DevTools:\s+(http:\/\/\S+)\/devtools/.exec(out);
      const url = /PostgreSQL is up at (postgres:\/\/\S+)/.exec(err);
      if (admin && url) res({ adminUrl: admin[1]!, pgUrl: url[1]! });
    };
    child.stdout!.on("data", (b: Buffer) => {
      out += b.toString();
      check();
    });
    child.stderr!.on("data", (b: Buffer) => {
      err += b.toString();
      check();
    });
    child.once("exit", (code) => rej(new Error(`arcana demo exited (${code}) before serving:\n${out}\n${err}`)));
    setTimeout(() => rej(new Error(`arcana demo not ready after 120 s:\n${out}\n${err}`)), 120_000).unref();
  }).catch((e) => {
    child.kill("SIGTERM");
    throw e;
  });
  return { baseUrl: `http://127.0.0.1:${port}`, ...found, child, exited };
}

before(async () => {
  demo = await startDemo();
  profile = mkdtempSync(resolve(tmpdir(), "arcana-chromium-"));
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
    viewport: { width: 1280, height: 1000 },
  });
});

after(async () => {
  await browser?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
  if (demo && demo.child.exitCode === null) {
    demo.child.kill("SIGTERM");
    const t = setTimeout(() => demo.child.kill("SIGKILL"), 15_000);
    await demo.exited;
    clearTimeout(t);
  }
});

it("the DevTools page signs in, shows a subscribed view and follows its version", async () => {
  const page = browser.pages()[0] ?? (await browser.newPage());
  const logs: string[] = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  const alice = createNodeClient({ baseUrl: demo.baseUrl, token: "dev-alice" });
  try {
    await page.goto(`${demo.adminUrl}/devtools`);

    // A token without arcana:admin is refused, and the page says why.
    await page.fill("#token", "dev-alice");
    await page.click("#go");
    await page.waitForSelector("#error:has-text('arcana:admin')", { timeout: 10_000 });

    await page.fill("#token", "dev-service");
    await page.click("#go");
    await page.waitForSelector("#status:text('live')", { timeout: 10_000 });
    await page.waitForSelector("#graphs td:has-text('project_tasks')", { timeout: 10_000 });

    const view = alice.view<{ id: bigint; title: string }>("project_tasks", { project_id: 1 });
    await view.ready();
    const row = page.locator("#views tr[data-view^='project_tasks/']");
    await row.waitFor({ timeout: 10_000 });
    const before = Number(await row.locator("td.version").innerText());
    assert.equal(BigInt(before), view.version);

    // Write behind Arcana's back: the demo follows the WAL.
    const db = new pg.Client({ connectionString: demo.pgUrl });
    await db.connect();
    try {
      const r = await db.query("UPDATE tasks SET title = $1 WHERE id = 2", [`Seen in DevTools ${Date.now()}`]);
      assert.equal(r.rowCount, 1);
    } finally {
      await db.end();
    }
    await page.waitForFunction(
      (v) => Number(document.querySelector("#views tr[data-view^='project_tasks/'] td.version")?.textContent) > v,
      before,
      { timeout: 20_000 },
    );
    await page.waitForSelector("#feed td:has-text('frame')", { timeout: 10_000 });
    await page.waitForSelector("#sessions td:has-text('alice')", { timeout: 10_000 });
    // Only the signed-in token's workspace shows.
    assert.equal(await page.locator("#sessions td:text-is('globex')").count(), 0);

    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: resolve(artifacts, "devtools.png"), fullPage: true });
  } catch (e) {
    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: resolve(artifacts, "devtools-failure.png"), fullPage: true }).catch(() => {});
    throw new Error(`${(e as Error).message}\npage console:\n${logs.join("\n")}`);
  } finally {
    alice.close();
  }
});
