//! The schedule's world: its schema, the graphs and mutations served, the
//! identities, the views clients hold, and the config axes a seed picks.

use std::collections::HashMap;
use std::fmt;

use arcana::proto as pb;

use super::rng::Rng;

/// Both workspaces; every table carries a `ws` column.
pub const WORKSPACES: [&str; 2] = ["acme", "globex"];

/// A static token and the identity behind it.
#[derive(Debug, Clone, Copy)]
pub struct Who {
    pub token: &'static str,
    pub user: &'static str,
    pub ws: &'static str,
}

/// The identities clients use: two per workspace.
pub const PEOPLE: [Who; 4] = [
    Who {
        token: "t-ann",
        user: "ann",
        ws: "acme",
    },
    Who {
        token: "t-ben",
        user: "ben",
        ws: "acme",
    },
    Who {
        token: "t-cat",
        user: "cat",
        ws: "globex",
    },
    Who {
        token: "t-dan",
        user: "dan",
        ws: "globex",
    },
];

/// The schedule's tables (the seed rows come from `writes::seed_data`).
pub const SCHEMA: &str = r#"
CREATE TABLE people (
    id         bigint PRIMARY KEY,
    ws         text NOT NULL,
    team_id    bigint NOT NULL,
    name       text NOT NULL,
    rank       bigint NOT NULL,
    manager_id bigint
);
CREATE TABLE items (
    id       bigint PRIMARY KEY,
    ws       text NOT NULL,
    list_id  bigint NOT NULL,
    title    text NOT NULL,
    pos      bigint NOT NULL,
    done     boolean NOT NULL DEFAULT false,
    owner_id bigint,
    assignee text
);
CREATE TABLE tags (
    ws      text NOT NULL,
    item_id bigint NOT NULL,
    tag     text NOT NULL,
    weight  bigint NOT NULL,
    PRIMARY KEY (ws, item_id, tag)
);
CREATE TABLE markers (
    ws text PRIMARY KEY,
    n  bigint NOT NULL
);
INSERT INTO markers VALUES ('acme', 0), ('globex', 0);
CREATE TABLE accounts (
    id  bigint PRIMARY KEY,
    ws  text NOT NULL,
    grp bigint NOT NULL,
    bal bigint NOT NULL
);
CREATE INDEX accounts_top ON accounts (ws, bal, id);
INSERT INTO accounts
SELECT g, CASE WHEN g % 2 = 0 THEN 'acme' ELSE 'globex' END, g % 3 + 1, (g * 37) % 1000
FROM generate_series(1, 300) g;
"#;

/// Accounts the hot-row writers hammer, of the 300 (both workspaces).
pub const HOT_ACCOUNTS: i64 = 300;

/// Where the server learns about writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Wal,
    Notify,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Wal => "wal",
            Mode::Notify => "notify",
        }
    }
}

/// The config axes of one schedule.
#[derive(Debug, Clone)]
pub struct Axes {
    pub mode: Mode,
    pub route: bool,
    pub patch: bool,
    pub replica_full: bool,
    pub self_join: bool,
    /// `engine.session_queue`: small queues make slow readers overflow.
    pub session_queue: usize,
    /// Hot rows: eight writers hammer a few hundred rows across `ORDER BY
    /// ... LIMIT` boundaries and window edges, with many views of one graph,
    /// and views are compared after every burst.
    pub hot: bool,
}

impl fmt::Display for Axes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |b: bool| if b { "on" } else { "off" };
        write!(
            f,
            "--modes {} --route {} --patch {} --replica-full {} --self-join {} --queue {} --hot {}",
            self.mode.name(),
            on(self.route),
            on(self.patch),
            on(self.replica_full),
            on(self.self_join),
            self.session_queue,
            on(self.hot)
        )
    }
}

/// Axes forced from the command line; `None` lets the seed choose.
#[derive(Debug, Clone, Default)]
pub struct AxisChoice {
    pub modes: Vec<Mode>,
    pub route: Option<bool>,
    pub patch: Option<bool>,
    pub replica_full: Option<bool>,
    pub self_join: Option<bool>,
    pub session_queue: Option<usize>,
    pub hot: Option<bool>,
}

impl AxisChoice {
    /// The axes of the schedule with `seed`. The mode alternates with the
    /// seed's parity so consecutive seeds cover both, and hot rows with
    /// the next bit, so every four seeds cover both modes with and without.
    pub fn pick(&self, seed: u64, rng: &mut Rng) -> Axes {
        let modes = if self.modes.is_empty() {
            vec![Mode::Wal, Mode::Notify]
        } else {
            self.modes.clone()
        };
        let mode = modes[(seed % modes.len() as u64) as usize];
        let (route, patch, full, queue) = (
            rng.chance(0.5),
            rng.chance(0.5),
            rng.chance(0.5),
            *rng.pick(&[16, 256]),
        );
        Axes {
            mode,
            route: self.route.unwrap_or(route),
            patch: self.patch.unwrap_or(patch),
            replica_full: self.replica_full.unwrap_or(full),
            self_join: self.self_join.unwrap_or(true),
            session_queue: self.session_queue.unwrap_or(queue),
            hot: self.hot.unwrap_or((seed / 2) % 2 == 1),
        }
    }
}

/// One graph as served: its SQL and the pieces of its config entry.
pub struct Graph {
    pub name: &'static str,
    pub table: &'static str,
    pub key: &'static [&'static str],
    pub sql: &'static str,
    pub total_sql: Option<&'static str>,
    pub deps: &'static str,
    pub nested: Option<&'static str>,
    pub route: Option<&'static str>,
    pub patch: Option<&'static str>,
    pub per_user: bool,
    /// Param names (all ints, all required).
    pub params: &'static [&'static str],
    /// The `window` config entry of an ordered graph.
    pub window: Option<&'static str>,
}

/// A window: `ORDER BY ... LIMIT :limit`, a total and a nested owner.
pub const LIST_ITEMS: Graph = Graph {
    name: "list_items",
    table: "items",
    key: &["id"],
    sql: r#"SELECT i.id, i.title, i.pos, o.id AS "owner.id", o.name AS "owner.name"
FROM items i LEFT JOIN people o ON o.id = i.owner_id AND o.ws = i.ws
WHERE i.ws = :workspace_id AND i.list_id = :list_id AND NOT i.done
ORDER BY i.pos, i.id LIMIT :limit"#,
    total_sql: Some(
        "SELECT count(*) FROM items i WHERE i.ws = :workspace_id AND i.list_id = :list_id AND NOT i.done",
    ),
    deps: r#"{ items = ["id", "ws", "list_id", "title", "pos", "done", "owner_id"], people = ["id", "ws", "name"] }"#,
    nested: Some(r#"{ owner = { table = "people", key = ["id"] } }"#),
    route: Some(r#"{ items = "list_id" }"#),
    patch: Some(r#"{ items = ["title"], people = ["name"] }"#),
    per_user: false,
    params: &["list_id", "limit"],
    window: None,
};

/// A self-join: a person's manager is a row of the same table, often one the
/// view also holds at the top level with more fields.
pub const TEAM_PEOPLE: Graph = Graph {
    name: "team_people",
    table: "people",
    key: &["id"],
    sql: r#"SELECT p.id, p.name, p.rank, m.id AS "manager.id", m.name AS "manager.name"
FROM people p LEFT JOIN people m ON m.id = p.manager_id AND m.ws = p.ws
WHERE p.ws = :workspace_id AND p.team_id = :team_id
ORDER BY p.rank, p.id LIMIT :limit"#,
    total_sql: Some(
        "SELECT count(*) FROM people p WHERE p.ws = :workspace_id AND p.team_id = :team_id",
    ),
    deps: r#"{ people = ["*"] }"#,
    nested: Some(r#"{ manager = { table = "people", key = ["id"] } }"#),
    route: None,
    patch: Some(r#"{ people = ["name"] }"#),
    per_user: false,
    params: &["team_id", "limit"],
    window: None,
};

/// A composite key of three columns.
pub const ITEM_TAGS: Graph = Graph {
    name: "item_tags",
    table: "tags",
    key: &["ws", "item_id", "tag"],
    sql: r#"SELECT t.ws, t.item_id, t.tag, t.weight FROM tags t
WHERE t.ws = :workspace_id AND t.weight >= :min_weight
ORDER BY t.weight DESC, t.item_id, t.tag LIMIT :limit"#,
    total_sql: Some(
        "SELECT count(*) FROM tags t WHERE t.ws = :workspace_id AND t.weight >= :min_weight",
    ),
    deps: r#"{ tags = ["*"] }"#,
    nested: None,
    route: None,
    patch: None,
    per_user: false,
    params: &["min_weight", "limit"],
    window: None,
};

/// Per user: the caller's open items.
pub const MY_ITEMS: Graph = Graph {
    name: "my_items",
    table: "items",
    key: &["id"],
    sql: r#"SELECT i.id, i.title, i.list_id FROM items i
WHERE i.ws = :workspace_id AND i.assignee = :user_id AND NOT i.done
ORDER BY i.list_id, i.pos, i.id"#,
    total_sql: None,
    deps: r#"{ items = ["id", "ws", "title", "list_id", "pos", "done", "assignee"] }"#,
    nested: None,
    route: Some(r#"{ items = { column = "assignee", param = "user_id" } }"#),
    patch: Some(r#"{ items = ["title"] }"#),
    per_user: true,
    params: &[],
    window: None,
};

/// Shows the drain marker: a write to it that a view shows means the
/// change stream has passed every earlier write.
pub const MARKERS: Graph = Graph {
    name: "markers",
    table: "markers",
    key: &["ws"],
    sql: "SELECT m.ws, m.n FROM markers m WHERE m.ws = :workspace_id",
    total_sql: None,
    deps: r#"{ markers = ["*"] }"#,
    nested: None,
    route: None,
    patch: None,
    per_user: false,
    params: &[],
    window: None,
};

/// A list kept live through windows: the same rows as `list_items`, in
/// `pos, id` order, with no LIMIT of its own. No total, so changes of items
/// outside what a window read skip it (see `Reach`), which this exercises.
pub const ITEM_WINDOW: Graph = Graph {
    name: "item_window",
    table: "items",
    key: &["id"],
    sql: r#"SELECT i.id, i.title, i.pos, o.id AS "owner.id", o.name AS "owner.name"
FROM items i LEFT JOIN people o ON o.id = i.owner_id AND o.ws = i.ws
WHERE i.ws = :workspace_id AND i.list_id = :list_id AND NOT i.done"#,
    total_sql: None,
    deps: r#"{ items = ["id", "ws", "list_id", "title", "pos", "done", "owner_id"], people = ["id", "ws", "name"] }"#,
    nested: Some(r#"{ owner = { table = "people", key = ["id"] } }"#),
    route: Some(r#"{ items = "list_id" }"#),
    patch: Some(r#"{ items = ["title"], people = ["name"] }"#),
    per_user: false,
    params: &["list_id"],
    window: Some(r#"{ order = ["pos", "id"], max_limit = 100 }"#),
};

/// A top-N of one table's hot rows: many views of it (one per limit)
/// share evaluation rounds, and every balance update can move a row across
/// some view's boundary.
pub const TOP_ACCOUNTS: Graph = Graph {
    name: "top_accounts",
    table: "accounts",
    key: &["id"],
    sql: r#"SELECT a.id, a.grp, a.bal FROM accounts a
WHERE a.ws = :workspace_id
ORDER BY a.bal DESC, a.id LIMIT :limit"#,
    total_sql: None,
    deps: r#"{ accounts = ["id", "ws", "grp", "bal"] }"#,
    nested: None,
    route: None,
    patch: Some(r#"{ accounts = ["grp"] }"#),
    per_user: false,
    params: &["limit"],
    window: None,
};

/// The same rows per group, routed on the group: a row moving between
/// groups leaves one view and enters another.
pub const GROUP_ACCOUNTS: Graph = Graph {
    name: "group_accounts",
    table: "accounts",
    key: &["id"],
    sql: r#"SELECT a.id, a.bal FROM accounts a
WHERE a.ws = :workspace_id AND a.grp = :grp
ORDER BY a.bal DESC, a.id LIMIT :limit"#,
    total_sql: Some("SELECT count(*) FROM accounts a WHERE a.ws = :workspace_id AND a.grp = :grp"),
    deps: r#"{ accounts = ["id", "ws", "grp", "bal"] }"#,
    nested: None,
    route: Some(r#"{ accounts = "grp" }"#),
    patch: None,
    per_user: false,
    params: &["grp", "limit"],
    window: None,
};

/// Every graph of the schedule (`config_toml` leaves the self-join out when it is off).
pub fn graphs() -> [&'static Graph; 8] {
    [
        &LIST_ITEMS,
        &TEAM_PEOPLE,
        &ITEM_TAGS,
        &MY_ITEMS,
        &MARKERS,
        &ITEM_WINDOW,
        &TOP_ACCOUNTS,
        &GROUP_ACCOUNTS,
    ]
}

/// A window over `item_window`: a limit, an optional (pos, id) cursor and
/// a direction (`pb::WindowDirection` as i32).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Win {
    pub limit: u32,
    pub cursor: Option<(i64, i64)>,
    pub dir: i32,
}

impl Win {
    pub fn pb(&self) -> pb::Window {
        let int = |i: i64| pb::Value {
            kind: Some(pb::value::Kind::Int(i)),
        };
        pb::Window {
            limit: self.limit,
            cursor: self
                .cursor
                .map(|(p, id)| vec![int(p), int(id)])
                .unwrap_or_default(),
            direction: self.dir,
            inclusive: false,
        }
    }

    /// A random window over lists whose positions run 0..20.
    pub fn random(rng: &mut Rng) -> Win {
        use pb::WindowDirection as D;
        let dir = *rng.pick(&[D::After, D::After, D::Before, D::Around]);
        let cursor = match (dir, rng.chance(0.3)) {
            (D::Around, _) | (_, false) => Some((rng.range(0, 21), rng.range(0, 60))),
            _ => None,
        };
        Win {
            limit: rng.range(2, 7) as u32,
            cursor,
            dir: dir as i32,
        }
    }
}

/// The graph named `name`.
pub fn graph(name: &str) -> &'static Graph {
    graphs().into_iter().find(|g| g.name == name).unwrap()
}

/// A view a client holds: a graph and its params.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ViewSpec {
    pub graph: &'static str,
    pub params: Vec<(&'static str, i64)>,
    /// For windowed graphs.
    pub window: Option<Win>,
}

impl ViewSpec {
    pub fn pb_window(&self) -> Option<pb::Window> {
        self.window.as_ref().map(Win::pb)
    }

    pub fn pb_params(&self) -> HashMap<String, pb::Value> {
        self.params
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    pb::Value {
                        kind: Some(pb::value::Kind::Int(*v)),
                    },
                )
            })
            .collect()
    }
}

impl fmt::Display for ViewSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(f, "{}({})", self.graph, p.join(", "))?;
        if let Some(w) = &self.window {
            write!(f, "[{w:?}]")?;
        }
        Ok(())
    }
}

/// The views clients choose from in a hot-row schedule: top-Ns of one graph
/// at many limits, per-group lists, and the item lists and windows whose
/// positions the hot writers move.
pub fn hot_catalog() -> Vec<ViewSpec> {
    let v = |graph, params: &[(&'static str, i64)]| ViewSpec {
        graph,
        params: params.to_vec(),
        window: None,
    };
    let w = |list: i64, limit: u32, cursor: Option<(i64, i64)>| ViewSpec {
        graph: "item_window",
        params: vec![("list_id", list)],
        window: Some(Win {
            limit,
            cursor,
            dir: pb::WindowDirection::After as i32,
        }),
    };
    vec![
        v("top_accounts", &[("limit", 3)]),
        v("top_accounts", &[("limit", 5)]),
        v("top_accounts", &[("limit", 10)]),
        v("top_accounts", &[("limit", 20)]),
        v("top_accounts", &[("limit", 40)]),
        v("group_accounts", &[("grp", 1), ("limit", 5)]),
        v("group_accounts", &[("grp", 2), ("limit", 10)]),
        v("group_accounts", &[("grp", 3), ("limit", 20)]),
        v("list_items", &[("list_id", 1), ("limit", 3)]),
        v("list_items", &[("list_id", 2), ("limit", 5)]),
        w(1, 3, None),
        w(2, 4, Some((8, 0))),
    ]
}

/// The views clients choose from (the same in both workspaces).
pub fn catalog(self_join: bool) -> Vec<ViewSpec> {
    let v = |graph, params: &[(&'static str, i64)]| ViewSpec {
        graph,
        params: params.to_vec(),
        window: None,
    };
    let w =
        |list: i64, limit: u32, cursor: Option<(i64, i64)>, dir: pb::WindowDirection| ViewSpec {
            graph: "item_window",
            params: vec![("list_id", list)],
            window: Some(Win {
                limit,
                cursor,
                dir: dir as i32,
            }),
        };
    let mut out = vec![
        v("list_items", &[("list_id", 1), ("limit", 3)]),
        v("list_items", &[("list_id", 1), ("limit", 5)]),
        v("list_items", &[("list_id", 2), ("limit", 3)]),
        v("list_items", &[("list_id", 3), ("limit", 50)]),
        v("item_tags", &[("min_weight", 0), ("limit", 6)]),
        v("item_tags", &[("min_weight", 5), ("limit", 4)]),
        v("my_items", &[]),
        w(1, 3, None, pb::WindowDirection::After),
        w(1, 4, Some((8, 0)), pb::WindowDirection::After),
        w(2, 5, Some((12, 0)), pb::WindowDirection::Around),
        w(3, 3, None, pb::WindowDirection::Before),
    ];
    if self_join {
        out.push(v("team_people", &[("team_id", 1), ("limit", 3)]));
        out.push(v("team_people", &[("team_id", 1), ("limit", 100)]));
        out.push(v("team_people", &[("team_id", 2), ("limit", 100)]));
    }
    out
}

/// The server's config file for a schedule.
pub fn config_toml(axes: &Axes, slot: &str) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[engine]\nhistory_len = 24\nsession_queue = {}\n\n\
         [changes]\nmode = \"{}\"\nslot = \"{slot}\"\npublication = \"{slot}_pub\"\nchannel = \"{slot}_ch\"\n\n",
        axes.session_queue,
        axes.mode.name()
    ));
    for w in PEOPLE {
        s.push_str(&format!(
            "[[auth.tokens]]\ntoken = \"{}\"\nuser = \"{}\"\nworkspace = \"{}\"\npermissions = [\"*\"]\n\n",
            w.token, w.user, w.ws
        ));
    }
    for g in graphs() {
        if g.name == "team_people" && !axes.self_join {
            continue;
        }
        s.push_str(&format!(
            "[[graphs]]\nname = \"{}\"\ntable = \"{}\"\nkey = {:?}\nper_user = {}\nsql = \"\"\"\n{}\n\"\"\"\ndeps = {}\n",
            g.name, g.table, g.key, g.per_user, g.sql, g.deps
        ));
        if let Some(t) = g.total_sql {
            s.push_str(&format!("total_sql = \"\"\"\n{t}\n\"\"\"\n"));
        }
        if let Some(n) = g.nested {
            s.push_str(&format!("nested = {n}\n"));
        }
        if let (true, Some(r)) = (axes.route, g.route) {
            s.push_str(&format!("route = {r}\n"));
        }
        if let (true, Some(p)) = (axes.patch, g.patch) {
            s.push_str(&format!("patch = {p}\n"));
        }
        if let Some(w) = g.window {
            s.push_str(&format!("window = {w}\n"));
        }
        for p in g.params {
            s.push_str(&format!(
                "\n[graphs.params.{p}]\ntype = \"int\"\nrequired = true\n"
            ));
        }
        s.push('\n');
    }
    s.push_str(MUTATIONS);
    s
}

const MUTATIONS: &str = r#"
[[mutations]]
name = "add_item"
sql = """
INSERT INTO items (id, ws, list_id, title, pos, assignee)
VALUES (:id, :workspace_id, :list_id, :title, :pos, :user_id)
ON CONFLICT (id) DO NOTHING RETURNING id
"""
changes = [{ table = "items", id = "id" }]
params = { id = { type = "int", required = true }, list_id = { type = "int", required = true }, title = { type = "string", required = true }, pos = { type = "int", required = true } }

[[mutations]]
name = "rename_item"
sql = "UPDATE items SET title = :title WHERE id = :id AND ws = :workspace_id RETURNING id"
changes = [{ table = "items", columns = ["title"], id = "id" }]
params = { id = { type = "int", required = true }, title = { type = "string", required = true } }

[[mutations]]
name = "move_item"
sql = "UPDATE items SET pos = :pos WHERE id = :id AND ws = :workspace_id RETURNING id"
changes = [{ table = "items", columns = ["pos"], id = "id" }]
params = { id = { type = "int", required = true }, pos = { type = "int", required = true } }

[[mutations]]
name = "delete_item"
sql = "DELETE FROM items WHERE id = :id AND ws = :workspace_id RETURNING id"
changes = [{ table = "items", id = "id" }]
params = { id = { type = "int", required = true } }
"#;
