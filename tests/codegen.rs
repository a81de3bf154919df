//! `arcana codegen` from a config against real PostgreSQL: the demo's
//! graphs and mutations plus a table of many column types and an
//! `[offline]` section, in TypeScript, Go and Swift; the CLI's config form
//! agrees with its server form.

mod common;

use arcana::app::DEMO_CONFIG;
use arcana::codegen::{self, Lang, Source};
use arcana::config::Config;
use common::{fresh_database, Harness};

/// A table with one column of each kind, nullable or not, and one of a
/// type no Value kind carries (`text[]`).
const EXTRA_SCHEMA: &str = r#"
CREATE TABLE gadgets (
    id           uuid PRIMARY KEY,
    workspace_id text NOT NULL,
    label        varchar(20),
    flag         boolean NOT NULL,
    ratio        double precision,
    born         date,
    blob         bytea,
    price        numeric NOT NULL,
    tags         text[]
);
"#;

const EXTRA_CONFIG: &str = r#"
[[graphs]]
name = "gadgets"
table = "gadgets"
permissions = ["tasks:read"]
sql = "SELECT g.id, g.label, g.flag FROM gadgets g WHERE g.workspace_id = :workspace_id ORDER BY g.id"
deps = { gadgets = ["id", "label", "flag", "workspace_id"] }

[offline]
install = false

[[offline.tables]]
table = "tasks"
scope = "workspace"
columns = ["title", "estimate", "due_at"]

[[offline.tables]]
table = "gadgets"
scope = "workspace"
columns = ["label", "flag", "price"]
"#;

fn config() -> Config {
    Config::parse(&format!("{DEMO_CONFIG}\n{EXTRA_CONFIG}")).unwrap()
}

/// A fresh demo database with the extra table; its URL.
async fn database() -> String {
    let url = fresh_database().await;
    arcana::postgres::execute_script(&url, EXTRA_SCHEMA)
        .await
        .unwrap();
    url
}

async fn source() -> Source {
    codegen::from_config(&config(), &database().await)
        .await
        .unwrap()
}

/// The text between `start` and the next line that is exactly `end`.
fn block<'a>(code: &'a str, start: &str, end: &str) -> &'a str {
    let from = code
        .find(start)
        .unwrap_or_else(|| panic!("no `{start}` in:\n{code}"));
    let rest = &code[from..];
    let to = rest
        .find(&format!("\n{end}\n"))
        .unwrap_or_else(|| panic!("`{start}` does not end in:\n{code}"));
    &rest[..to + end.len() + 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_has_every_table_the_graphs_read_and_the_offline_tables() {
    let s = source().await;
    let tables: Vec<&str> = s.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(tables, ["gadgets", "projects", "tasks", "users"]);
    let gadgets = &s.tables[0];
    let col = |name: &str| gadgets.columns.iter().find(|c| c.name == name).unwrap();
    assert_eq!(
        (col("id").kind.as_str(), col("id").nullable),
        ("uuid", false)
    );
    assert_eq!(
        (col("label").pg_type.as_str(), col("label").nullable),
        ("character varying(20)", true)
    );
    assert_eq!(col("tags").kind, "", "text[] has no Value kind");
    let offline: Vec<(&str, Vec<String>)> = s
        .offline
        .iter()
        .map(|t| (t.name.as_str(), t.key.clone()))
        .collect();
    assert_eq!(
        offline,
        [
            ("tasks", vec!["id".to_owned()]),
            ("gadgets", vec!["id".to_owned()])
        ]
    );
    // Key and scope columns always travel.
    let travel: Vec<&str> = s.offline[0]
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        travel,
        ["title", "estimate", "due_at", "id", "workspace_id"]
    );
    assert_eq!(s.describe.graphs.len(), 5);
    assert_eq!(s.describe.mutations.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_has_graph_mutation_table_and_offline_types() {
    let ts = codegen::generate(Lang::Ts, &source().await, "");
    // Graph params: required plain, optional nullable, one_of as literals.
    assert!(
        ts.contains("  project_id: bigint | number;\n  /** Only tasks in this status. */\n  status?: \"todo\" | \"doing\" | \"done\" | null;\n"),
        "{ts}"
    );
    // Mutation params and result.
    assert!(
        block(&ts, "export type CreateTaskParams = {", "};").contains(
            "  assignee_id?: string | null;\n  project_id: bigint | number;\n  title: string;\n"
        ),
        "{ts}"
    );
    assert!(ts.contains("export type DeleteTaskResult = {\n  id: bigint;\n  project_id: bigint;\n  assignee_id: string | null;\n};"), "{ts}");
    // Every column of a table the graphs read, typed from the catalog.
    assert_eq!(
        block(&ts, "export type TasksTableRow = {", "};"),
        "export type TasksTableRow = {\n  id: bigint; // bigint\n  workspace_id: string; // text\n  project_id: bigint; // bigint\n  title: string; // text\n  status: string; // text\n  position: bigint; // integer\n  assignee_id: string | null; // text\n  estimate: string | null; // numeric(12,2)\n  points: bigint | null; // bigint\n  due_at: Date | null; // timestamp with time zone\n  meta: Json; // jsonb\n  notes: string; // text\n};"
    );
    let gadgets = block(&ts, "export type GadgetsTableRow = {", "};");
    assert!(gadgets.contains("  id: string; // uuid\n"), "{gadgets}");
    assert!(
        gadgets.contains("  label: string | null; // character varying(20)\n"),
        "{gadgets}"
    );
    assert!(
        gadgets.contains("  flag: boolean; // boolean\n"),
        "{gadgets}"
    );
    assert!(
        gadgets.contains("  ratio: number | null; // double precision\n"),
        "{gadgets}"
    );
    assert!(
        gadgets.contains("  blob: Uint8Array | null; // bytea\n"),
        "{gadgets}"
    );
    assert!(!gadgets.contains("tags"), "{gadgets}");
    assert!(ts.contains("// Not typed (no Value kind carries their type): tags (text[]).\nexport type GadgetsTableRow"), "{ts}");
    assert!(ts.contains("export interface Tables {\n  gadgets: GadgetsTableRow;\n  projects: ProjectsTableRow;\n  tasks: TasksTableRow;\n  users: UsersTableRow;\n}"), "{ts}");
    // Offline tables: the travelling columns only.
    assert_eq!(
        block(&ts, "export type TasksOfflineRow = {", "};"),
        "export type TasksOfflineRow = {\n  title: string; // text\n  estimate: string | null; // numeric(12,2)\n  due_at: Date | null; // timestamp with time zone\n  id: bigint; // bigint\n  workspace_id: string; // text\n};"
    );
    assert!(ts.contains("  tasks: { key: [\"id\"]; values: TasksOfflineRow };\n  gadgets: { key: [\"id\"]; values: GadgetsOfflineRow };\n"), "{ts}");
    assert!(
        ts.contains("export const offlineTableNames = [\"tasks\", \"gadgets\"] as const;"),
        "{ts}"
    );
    tsc(&ts);
}

/// Use of the generated types that must compile; each `@ts-expect-error`
/// line must be an error.
const TS_USE: &str = r#"
import { createNodeClient, typed } from "CLIENT/src/node.js";
import type { GadgetsTableRow, OfflineTables, Schema, Tables, TasksOfflineRow } from "./types.js";

const client = typed<Schema>(createNodeClient({ baseUrl: "http://127.0.0.1:1", token: "dev-alice" }));
export function use(): void {
  const g = client.view("gadgets").items[0]!;
  const flag: boolean = g.flag;
  const label: string | null = g.label;
  void [flag, label];
  const row: GadgetsTableRow = { id: "u", workspace_id: "w", label: null, flag: true, ratio: null, born: null, blob: null, price: "1.50" };
  // @ts-expect-error a NOT NULL column is not nullable
  const bad: GadgetsTableRow = { ...row, flag: null };
  // @ts-expect-error an untyped column is left out
  void row.tags;
  const due: Date | null = ({} as Tables["tasks"]).due_at;
  const key: OfflineTables["tasks"]["key"] = ["id"];
  const values: TasksOfflineRow = { title: "t", estimate: null, due_at: null, id: 1n, workspace_id: "w" };
  // @ts-expect-error offline rows carry only the travelling columns
  void values.points;
  void [bad, due, key];
}
"#;

/// Type-checks generated TypeScript and a use of it with the TS client's
/// own compiler (installing the client's packages first if needed).
fn tsc(code: &str) {
    let root = env!("CARGO_MANIFEST_DIR");
    let client = format!("{root}/clients/ts");
    let compiler = format!("{client}/node_modules/typescript/bin/tsc");
    if !std::path::Path::new(&compiler).exists() {
        let out = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&client)
            .output()
            .expect("running npm (is Node.js installed?)");
        assert!(
            out.status.success(),
            "npm ci: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = std::env::temp_dir().join(format!("arcana-codegen-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("types.ts"), code).unwrap();
    std::fs::write(dir.join("use.ts"), TS_USE.replace("CLIENT", &client)).unwrap();
    std::fs::write(dir.join("package.json"), r#"{ "type": "module" }"#).unwrap();
    std::fs::write(
        dir.join("tsconfig.json"),
        format!(
            r#"{{ "extends": "{client}/tsconfig.json", "compilerOptions": {{ "rootDir": "/", "noEmit": true }}, "files": ["types.ts", "use.ts"] }}"#
        ),
    )
    .unwrap();
    let out = std::process::Command::new("node")
        .args([&compiler, "-p", "tsconfig.json"])
        .current_dir(&dir)
        .output()
        .expect("running node");
    assert!(
        out.status.success(),
        "tsc: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_has_graph_mutation_table_and_offline_types_and_vets() {
    let go = codegen::generate(Lang::Go, &source().await, "gadgettypes");
    assert!(go.contains("package gadgettypes\n"), "{go}");
    assert!(
        block(&go, "type ProjectTasksParams struct {", "}")
            .contains("\tLimit *int64\n\tProjectID int64 // The project whose tasks to list.\n"),
        "{go}"
    );
    assert!(
        go.contains(
            "type UpdateTaskParams struct {\n\tID int64\n\tStatus *string\n\tTitle *string\n}"
        ),
        "{go}"
    );
    let tasks = block(&go, "type TasksTableRow struct {", "}");
    assert!(
        tasks.contains("\tEstimate *arcana.Numeric // numeric(12,2)\n"),
        "{tasks}"
    );
    assert!(
        tasks.contains("\tDueAt *time.Time // timestamp with time zone\n"),
        "{tasks}"
    );
    assert!(tasks.contains("\tMeta arcana.JSON // jsonb\n"), "{tasks}");
    assert!(tasks.contains("\tPosition int64 // integer\n"), "{tasks}");
    let gadgets = block(&go, "type GadgetsTableRow struct {", "}");
    assert!(gadgets.contains("\tID arcana.UUID // uuid\n"), "{gadgets}");
    assert!(
        gadgets.contains("\tBorn *arcana.Date // date\n"),
        "{gadgets}"
    );
    assert!(gadgets.contains("\tBlob *[]byte // bytea\n"), "{gadgets}");
    assert!(
        gadgets.contains("\tPrice arcana.Numeric // numeric\n"),
        "{gadgets}"
    );
    assert!(go.contains("\tTableGadgets = \"gadgets\"\n"), "{go}");
    assert!(
        go.contains("func DecodeTasksOfflineRow(values map[string]any) TasksOfflineRow {"),
        "{go}"
    );
    assert!(go.contains("\tif v, ok := values[\"estimate\"]; ok {\n\t\tif x, ok := v.(arcana.Numeric); ok {\n\t\t\tout.Estimate = &x\n"), "{go}");
    assert!(go.contains("\tOfflineGadgets = \"gadgets\"\n"), "{go}");
    go_vet(&go);
}

/// `gofmt` parses the file and `go vet` type-checks it against the Go
/// client, in a scratch module that points at clients/go.
fn go_vet(code: &str) {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = std::env::temp_dir().join(format!("arcana-codegen-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(dir.join("gadgettypes")).unwrap();
    std::fs::write(dir.join("gadgettypes/types.go"), code).unwrap();
    std::fs::write(
        dir.join("go.mod"),
        format!(
            "module codegencheck\n\ngo 1.22\n\nrequire github.com/arcana-sync/arcana/clients/go v0.0.0\n\nreplace github.com/arcana-sync/arcana/clients/go => {root}/clients/go\n"
        ),
    )
    .unwrap();
    std::fs::copy(format!("{root}/clients/go/go.sum"), dir.join("go.sum")).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .current_dir(&dir)
            .env("GOFLAGS", "-mod=mod")
            .output()
            .unwrap_or_else(|e| panic!("running {args:?} (is Go installed?): {e}"));
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["gofmt", "-e", "-l", "gadgettypes/types.go"]);
    run(&["go", "vet", "./..."]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swift_has_codable_sendable_structs() {
    let swift = codegen::generate(Lang::Swift, &source().await, "");
    assert!(swift.starts_with("// Generated by `arcana codegen --lang swift`. Do not edit.\n\nimport Arcana\nimport Foundation\n"), "{swift}");
    assert!(swift.contains("public enum GraphName {\n  public static let gadgets = \"gadgets\"\n  public static let myTasks = \"my_tasks\"\n"), "{swift}");
    // Params: required first in the initializer, optional ones left out when nil.
    let params = block(
        &swift,
        "public struct ProjectTasksParams: Sendable, Hashable {",
        "}",
    );
    assert!(
        params.contains("  public var projectID: Int64\n"),
        "{params}"
    );
    assert!(
        params.contains(
            "  public init(projectID: Int64, limit: Int64? = nil, status: String? = nil) {"
        ),
        "{params}"
    );
    assert!(params.contains("    p[\"project_id\"] = .int(projectID)\n    if let v = status { p[\"status\"] = .string(v) }\n"), "{params}");
    assert!(
        params.contains("One of `todo`, `doing`, `done`."),
        "{params}"
    );
    let create = block(
        &swift,
        "public struct CreateTaskResult: Codable, Sendable, Hashable {",
        "}",
    );
    assert!(
        create.contains("  public var assigneeID: String?\n"),
        "{create}"
    );
    assert!(
        create.contains("  public init?(_ result: MutateResult) {"),
        "{create}"
    );
    // A table row: every typed column, optional when nullable, Codable
    // under the column names.
    let tasks = block(
        &swift,
        "public struct TasksTableRow: Codable, Sendable, Hashable {",
        "}",
    );
    for line in [
        "  public var id: Int64  // bigint\n",
        "  public var estimate: String?  // numeric(12,2)\n",
        "  public var dueAt: Date?  // timestamp with time zone\n",
        "  public var meta: String  // jsonb\n",
        "    case dueAt = \"due_at\"\n",
        "      let meta = FieldValue.json(get(\"meta\")),\n",
        "      let notes = FieldValue.string(get(\"notes\")) else { return nil }\n",
        "    self.dueAt = FieldValue.timestamp(get(\"due_at\"))\n",
        "  public init?(_ row: Row) {\n",
    ] {
        assert!(tasks.contains(line), "no {line:?} in {tasks}");
    }
    let gadgets = block(
        &swift,
        "public struct GadgetsTableRow: Codable, Sendable, Hashable {",
        "}",
    );
    assert!(
        gadgets.contains("  public var blob: Data?  // bytea\n"),
        "{gadgets}"
    );
    assert!(
        gadgets.contains("  public var ratio: Double?  // double precision\n"),
        "{gadgets}"
    );
    assert!(
        gadgets.contains("  public var flag: Bool  // boolean\n"),
        "{gadgets}"
    );
    assert!(!gadgets.contains("tags"), "{gadgets}");
    let offline = block(
        &swift,
        "public struct GadgetsOfflineRow: Codable, Sendable, Hashable {",
        "}",
    );
    assert!(
        offline.contains("  public var price: String  // numeric\n"),
        "{offline}"
    );
    assert!(
        offline.contains("  public init?(values: [String: ArcanaValue]) {"),
        "{offline}"
    );
    assert!(!offline.contains("init?(_ row: Row)"), "{offline}");
    assert!(swift.contains("public let offlineTableKeys: [String: [String]] = [\n  \"tasks\": [\"id\"],\n  \"gadgets\": [\"id\"],\n]"), "{swift}");
    assert!(swift.contains("private enum FieldValue {"), "{swift}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_the_server_would_refuse_fails_with_its_message() {
    let mut c = config();
    c.graphs[0].sql = "SELECT x.id FROM no_such_table x".into();
    let err = codegen::from_config(&c, &database().await)
        .await
        .unwrap_err();
    assert!(
        err.contains("graph `project_tasks`") && err.contains("no_such_table"),
        "{err}"
    );
}

/// The CLI's config form (no server, no token) writes what its server form
/// writes, then the table types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_config_form_extends_the_server_form() {
    let h = Harness::start().await;
    let dir = std::env::temp_dir().join(format!("arcana-codegen-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("arcana.toml");
    std::fs::write(&config, DEMO_CONFIG).unwrap();
    for lang in ["ts", "go", "swift"] {
        let from_config = dir.join(format!("config.{lang}"));
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_arcana"))
            .args(["codegen", "--lang", lang, "--config"])
            .arg(&config)
            .args(["--database-url", &h.db_url, "--out"])
            .arg(&from_config)
            .env_remove("ARCANA_TOKEN")
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let from_config = std::fs::read_to_string(&from_config).unwrap();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_arcana"))
            .args([
                "codegen",
                "--lang",
                lang,
                "--server",
                &h.endpoint(),
                "--token",
                "dev-alice",
            ])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let from_server = String::from_utf8(out.stdout).unwrap();
        // Swift ends with its private helpers; the rest is a prefix.
        let common = from_server
            .split("\n/// Reads one kind of value")
            .next()
            .unwrap();
        assert!(
            from_config.starts_with(common),
            "{lang}: the config form does not begin with the server form:\n{from_config}\n---\n{from_server}"
        );
        assert!(
            from_config.len() > from_server.len() + 500,
            "{lang}: no table types"
        );
        assert!(from_config.contains("TasksTableRow"), "{from_config}");
    }
    // The config form refuses a server.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_arcana"))
        .args(["codegen", "--lang", "ts", "--config"])
        .arg(&config)
        .args(["--server", &h.endpoint()])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
