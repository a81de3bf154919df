// The Node client over TLS: a second server on the demo's database serves
// TLS with a certificate from a CA made here (with openssl); the client
// trusts that CA through its `tls` option and refuses another.
import assert from "node:assert/strict";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import { type ArcanaClient, createNodeClient } from "../../src/node.js";
import { type DemoServer, freePort, repoRoot, startDemo } from "../support/server.js";

let demo: DemoServer;
let tlsServer: ChildProcess | undefined;
let dir: string;
let port: number;
const clients: ArcanaClient[] = [];

/** A CA and a certificate for localhost it signed; returns the CA's PEM file. */
function makeCa(name: string, withServerCert: boolean): string {
  const ssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  ssl("req", "-x509", ...ec, "-keyout", `${name}.key`, "-out", `${name}.pem`, "-days", "1",
    "-subj", `/CN=${name}`, "-addext", "basicConstraints=critical,CA:TRUE",
    "-addext", "keyUsage=critical,keyCertSign,digitalSignature");
  if (withServerCert) {
    writeFileSync(join(dir, "san.ext"), "subjectAltName=DNS:localhost\n");
    ssl("req", ...ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost");
    ssl("x509", "-req", "-in", "server.csr", "-CA", `${name}.pem`, "-CAkey", `${name}.key`,
      "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.ext");
  }
  return join(dir, `${name}.pem`);
}

function waitListening(p: number, ms: number): Promise<void> {
  const until = Date.now() + ms;
  return new Promise((res, rej) => {
    const attempt = () => {
      const s = connect(p, "127.0.0.1");
      s.once("connect", () => {
        s.destroy();
        res();
      });
      s.once("error", () => {
        s.destroy();
        if (Date.now() > until) rej(new Error(`nothing listens on ${p}`));
        else setTimeout(attempt, 50);
      });
    };
    attempt();
  });
}

function client(tls: Parameters<typeof createNodeClient>[0]["tls"], scheme = "https"): ArcanaClient {
  const c = createNodeClient({ baseUrl: `${scheme}://127.0.0.1:${port}`, token: "dev-alice", tls });
  clients.push(c);
  return c;
}

before(async () => {
  demo = await startDemo();
  dir = mkdtempSync(join(tmpdir(), "arcana-ts-tls-"));
  makeCa("ca", true);
  const config = `${readFileSync(resolve(repoRoot(), "demo/arcana.toml"), "utf8")}
[changes]
mode = "none"

[server.tls]
cert = ${JSON.stringify(join(dir, "server.crt"))}
key = ${JSON.stringify(join(dir, "server.key"))}
`;
  writeFileSync(join(dir, "arcana.toml"), config);
  port = await freePort();
  const bin = process.env.ARCANA_BIN ?? resolve(repoRoot(), "target/debug/arcana");
  tlsServer = spawn(
    bin,
    ["serve", "-c", join(dir, "arcana.toml"), "--database-url", demo.pgUrl, "--listen", `127.0.0.1:${port}`],
    { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, RUST_LOG: "warn" } },
  );
  await waitListening(port, 60_000);
});

after(async () => {
  for (const c of clients) c.close();
  if (tlsServer && tlsServer.exitCode === null) {
    const exited = new Promise((r) => tlsServer!.once("exit", r));
    tlsServer.kill("SIGTERM");
    await exited;
  }
  await demo?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("TLS", () => {
  it("connects trusting the server's CA", async () => {
    const d = await client({ caFile: join(dir, "ca.pem"), serverName: "localhost" }).describe();
    assert.ok(d.graphs.length > 0);
  });

  it("refuses a server whose certificate another CA signed", async () => {
    const other = makeCa("other", false);
    await assert.rejects(client({ caFile: other, serverName: "localhost" }).describe());
  });

  it("refuses to speak plaintext to a TLS server", async () => {
    await assert.rejects(client(undefined, "http").describe());
  });

  it("says which file it could not read", () => {
    assert.throws(
      () => createNodeClient({ baseUrl: "https://127.0.0.1:1", tls: { caFile: join(dir, "missing.pem") } }),
      /reading the TLS CA file/,
    );
  });
});
