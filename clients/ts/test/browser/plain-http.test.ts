// Plain HTTP beside gRPC: headless Chromium follows one view through a
// browser EventSource (Server-Sent Events) while rows change in Postgres,
// and the browser resumes it by itself after the connection drops.
// (`buf curl` and `curl` are driven from tests/connect.rs.)
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { resolve } from "node:path";
import { after, before, it } from "node:test";
import pg from "pg";
import { type BrowserContext, chromium } from "playwright-core";
import { createNodeClient } from "../../src/node.js";
import { startProxy } from "../support/proxy.js";
import { type DemoServer, startDemo } from "../support/server.js";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

let demo: DemoServer;
let browser: BrowserContext;
let profile: string;

before(async () => {
  demo = await startDemo();
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
  await demo?.stop();
});

async function sql(q: string): Promise<void> {
  const c = new pg.Client({ connectionString: demo.pgUrl });
  await c.connect();
  try {
    await c.query(q);
  } finally {
    await c.end();
  }
}

interface Seen {
  type: string;
  id: string;
  /** The event's data (a frame in proto3 JSON). */
  data: string;
}

it("a browser EventSource follows a view and resumes it with Last-Event-ID", async () => {
  // Through a proxy the test can cut, as a network drops a connection; the
  // page comes from the same origin, so the stream is same-origin. A Node
  // client keeps the view alive meanwhile, so the server still has the
  // diffs the browser misses (a view nobody holds starts over, and a
  // resume of it is a snapshot).
  const proxy = await startProxy(demo.port);
  const holder = createNodeClient({ baseUrl: demo.baseUrl, token: "dev-alice" });
  const held = holder.view<{ id: bigint; title: string }>("project_tasks", { project_id: 1 });
  await held.ready();
  const page = await browser.newPage();
  // An empty page of that origin (the server has no HTML to serve).
  await page.route(`${proxy.baseUrl}/`, (r) => r.fulfill({ contentType: "text/html", body: "<!doctype html><title>sse</title>" }));
  await page.goto(`${proxy.baseUrl}/`);
  const url = `/sse/project_tasks?project_id=1&access_token=dev-alice`;
  await page.evaluate((u) => {
    const w = window as unknown as { seen: Seen[]; source: EventSource };
    w.seen = [];
    const take = (type: string) => (e: MessageEvent) => w.seen.push({ type, id: e.lastEventId, data: e.data });
    w.source = new EventSource(u);
    w.source.addEventListener("snapshot", take("snapshot"));
    w.source.addEventListener("diff", take("diff"));
    w.source.addEventListener("error", () => w.seen.push({ type: "error", id: "", data: "" }));
  }, url);
  const seen = async (): Promise<Seen[]> => page.evaluate(() => (window as unknown as { seen: Seen[] }).seen);
  const until = async (what: string, ok: (s: Seen[]) => boolean): Promise<Seen[]> => {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const s = await seen();
      if (ok(s)) return s;
      if (Date.now() > deadline) throw new Error(`${what}: ${JSON.stringify(s)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const first = await until("a snapshot", (s) => s.some((e) => e.type === "snapshot"));
  const snap = first.find((e) => e.type === "snapshot")!;
  assert.match(snap.id, /^\d+:\d+$/);

  await sql("UPDATE tasks SET title = 'Seen in the browser' WHERE id = 1");
  const withDiff = await until("a diff", (s) => s.some((e) => e.type === "diff" && e.data.includes("Seen in the browser")));
  const diff = withDiff.find((e) => e.type === "diff" && e.data.includes("Seen in the browser"))!;
  assert.notEqual(diff.id, snap.id);

  // The connection drops; a write lands meanwhile. EventSource reconnects
  // by itself, sending Last-Event-ID: the write arrives as a diff from the
  // version it held, not as a new snapshot.
  await proxy.cut();
  await until("the drop noticed", (s) => s.some((e) => e.type === "error"));
  await sql("UPDATE tasks SET title = 'Written while away' WHERE id = 1");
  await proxy.restore();
  const resumed = await until("the write made while away", (s) => s.some((e) => e.data.includes("Written while away")));
  const afterDrop = resumed.slice(resumed.findIndex((e) => e.type === "error"));
  assert.ok(
    afterDrop.some((e) => e.type === "diff" && e.data.includes("Written while away")),
    JSON.stringify(afterDrop),
  );
  assert.ok(!afterDrop.some((e) => e.type === "snapshot"), `resumed with a snapshot: ${JSON.stringify(afterDrop)}`);
  await page.close();
  await proxy.close();
  holder.close();
});
