//! Random writes: SQL transactions on plain connections, and mutations
//! through gRPC. Statements use literals chosen from the schedule's PRNG;
//! failures (conflicts, PostgreSQL restarting) are counted and skipped.

use std::sync::Arc;
use std::time::Duration;

use arcana::proto as pb;
use tokio::time::Instant;

use super::model::{HOT_ACCOUNTS, PEOPLE, WORKSPACES};
use super::rng::Rng;
use super::server::connect;
use super::stats::Stats;

const WORDS: [&str; 8] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
];
const TAGS: [&str; 4] = ["red", "green", "blue", "gold"];
const USERS: [&str; 5] = ["ann", "ben", "cat", "dan", ""];

fn word(r: &mut Rng) -> String {
    format!("{}-{}", r.pick(&WORDS), r.range(0, 99))
}

fn opt_id(r: &mut Rng, hi: i64) -> String {
    if r.chance(0.25) {
        "NULL".into()
    } else {
        r.range(1, hi).to_string()
    }
}

fn assignee(r: &mut Rng) -> String {
    match *r.pick(&USERS) {
        "" => "NULL".into(),
        u => format!("'{u}'"),
    }
}

/// An item insert (skipped when the id exists).
pub fn insert_item(r: &mut Rng) -> String {
    format!(
        "INSERT INTO items VALUES ({}, '{}', {}, '{}', {}, {}, {}, {}) ON CONFLICT (id) DO NOTHING",
        r.range(1, 40),
        r.pick(&WORKSPACES),
        r.range(1, 3),
        word(r),
        r.range(0, 20),
        r.chance(0.15),
        opt_id(r, 12),
        assignee(r)
    )
}

/// A person insert (skipped when the id exists).
pub fn insert_person(r: &mut Rng) -> String {
    format!(
        "INSERT INTO people VALUES ({}, '{}', {}, '{}', {}, {}) ON CONFLICT (id) DO NOTHING",
        r.range(1, 12),
        r.pick(&WORKSPACES),
        r.range(1, 2),
        word(r),
        r.range(0, 9),
        opt_id(r, 12)
    )
}

/// A tag insert, or an update of the tag's weight when it exists.
pub fn insert_tag(r: &mut Rng) -> String {
    format!(
        "INSERT INTO tags VALUES ('{}', {}, '{}', {}) ON CONFLICT (ws, item_id, tag) DO UPDATE SET weight = EXCLUDED.weight",
        r.pick(&WORKSPACES),
        r.range(1, 6),
        r.pick(&TAGS),
        r.range(0, 9)
    )
}

/// One random statement (or a short group that belongs together).
fn statement(r: &mut Rng, truncate: bool) -> String {
    let (item, person) = (r.range(1, 40), r.range(1, 12));
    statement_on(r, truncate, item, person)
}

/// One random statement whose single-row cases touch `item` or `person`:
/// pointed at rows views hold, a lost change shows.
pub fn statement_on(r: &mut Rng, truncate: bool, item: i64, person: i64) -> String {
    match r.range(0, 27) {
        0..=3 => insert_item(r),
        4 => format!("UPDATE items SET title = '{}' WHERE id = {item}", word(r)),
        5 => format!(
            "UPDATE items SET pos = {} WHERE id = {item}",
            r.range(0, 20)
        ),
        6 => format!(
            "UPDATE items SET list_id = {} WHERE id = {item}",
            r.range(1, 3)
        ),
        7 => format!("UPDATE items SET done = NOT done WHERE id = {item}"),
        8 => format!(
            "UPDATE items SET owner_id = {} WHERE id = {item}",
            opt_id(r, 12)
        ),
        9 => format!(
            "UPDATE items SET assignee = {} WHERE id = {item}",
            assignee(r)
        ),
        10 => format!(
            "UPDATE items SET ws = '{}' WHERE id = {item}",
            r.pick(&WORKSPACES)
        ),
        11 => format!("DELETE FROM items WHERE id = {item}"),
        12 => {
            let to = r.range(1, 40);
            format!("UPDATE items SET id = {to} WHERE id = {item} AND NOT EXISTS (SELECT 1 FROM items WHERE id = {to})")
        }
        13 => format!(
            "UPDATE items SET pos = pos + 1, title = '{}' WHERE ws = '{}' AND list_id = {}",
            word(r),
            r.pick(&WORKSPACES),
            r.range(1, 3)
        ),
        14 | 15 => insert_person(r),
        16 => format!("UPDATE people SET name = '{}' WHERE id = {person}", word(r)),
        17 => format!(
            "UPDATE people SET rank = {} WHERE id = {person}",
            r.range(0, 9)
        ),
        18 => format!(
            "UPDATE people SET team_id = {} WHERE id = {person}",
            r.range(1, 2)
        ),
        19 => format!(
            "UPDATE people SET manager_id = {} WHERE id = {person}",
            opt_id(r, 12)
        ),
        20 => format!("DELETE FROM people WHERE id = {person}"),
        21 => {
            let to = r.range(1, 12);
            format!("UPDATE people SET id = {to} WHERE id = {person} AND NOT EXISTS (SELECT 1 FROM people WHERE id = {to})")
        }
        22 | 23 => insert_tag(r),
        24 => format!(
            "UPDATE tags SET weight = {} WHERE item_id = {} AND tag = '{}'",
            r.range(0, 9),
            r.range(1, 6),
            r.pick(&TAGS)
        ),
        25 => format!(
            "DELETE FROM tags WHERE item_id = {} AND tag = '{}'",
            r.range(1, 6),
            r.pick(&TAGS)
        ),
        26 => {
            let (ws, id, from, to) = (
                r.pick(&WORKSPACES),
                r.range(1, 6),
                r.pick(&TAGS),
                r.pick(&TAGS),
            );
            format!("UPDATE tags SET tag = '{to}' WHERE ws = '{ws}' AND item_id = {id} AND tag = '{from}' AND NOT EXISTS (SELECT 1 FROM tags WHERE ws = '{ws}' AND item_id = {id} AND tag = '{to}')")
        }
        _ if truncate && r.chance(0.3) => {
            let mut s = String::from("TRUNCATE tags");
            for _ in 0..r.range(2, 6) {
                s.push_str(";\n");
                s.push_str(&insert_tag(r));
            }
            s
        }
        _ => insert_tag(r),
    }
}

/// The seed data: a few rows of every table in both workspaces.
pub fn seed_data(r: &mut Rng) -> String {
    let mut s = String::new();
    for _ in 0..30 {
        s.push_str(&insert_item(r));
        s.push_str(";\n");
    }
    for _ in 0..12 {
        s.push_str(&insert_person(r));
        s.push_str(";\n");
    }
    for _ in 0..12 {
        s.push_str(&insert_tag(r));
        s.push_str(";\n");
    }
    s
}

/// A random transaction of one to `most` statements.
pub fn transaction(r: &mut Rng, most: i64, truncate: bool) -> String {
    let n = r.range(1, most);
    let body: Vec<String> = (0..n).map(|_| statement(r, truncate)).collect();
    format!("BEGIN;\n{};\nCOMMIT", body.join(";\n"))
}

/// One hot-row transaction: balance updates and transfers of a few hundred
/// accounts (large steps, so rows cross every top-N boundary), an account
/// moving to another group, or items moving across list limits and window
/// edges.
pub fn hot_transaction(r: &mut Rng) -> String {
    let acct = |r: &mut Rng| r.range(1, HOT_ACCOUNTS);
    let body = match r.range(0, 9) {
        0..=3 => format!(
            "UPDATE accounts SET bal = bal + {} WHERE id = {}",
            r.range(-400, 400),
            acct(r)
        ),
        4 | 5 => {
            let (a, b, d) = (acct(r), acct(r), r.range(1, 500));
            format!(
                "UPDATE accounts SET bal = bal - {d} WHERE id = {a};\nUPDATE accounts SET bal = bal + {d} WHERE id = {b}"
            )
        }
        6 => format!(
            "UPDATE accounts SET grp = {} WHERE id = {}",
            r.range(1, 3),
            acct(r)
        ),
        7 => format!(
            "UPDATE items SET pos = {} WHERE id = {}",
            r.range(0, 20),
            r.range(1, 40)
        ),
        _ => format!(
            "UPDATE items SET pos = {}, list_id = {} WHERE id = {}",
            r.range(0, 20),
            r.range(1, 3),
            r.range(1, 40)
        ),
    };
    format!("BEGIN;\n{body};\nCOMMIT")
}

/// One hot-row statement touching `account` (for single-write checkpoints).
pub fn hot_statement_on(r: &mut Rng, account: i64) -> String {
    format!(
        "UPDATE accounts SET bal = bal + {} WHERE id = {account}",
        r.range(-400, 400)
    )
}

/// Runs random transactions until `until` (hot-row ones when `hot`).
pub async fn hot_writer(url: String, r: Rng, until: Instant, stats: Arc<Stats>) {
    writer(url, r, until, stats, hot_transaction, 0).await
}

/// Runs random transactions until `until`.
pub async fn sql_writer(url: String, r: Rng, until: Instant, truncate: bool, stats: Arc<Stats>) {
    writer(url, r, until, stats, |r| transaction(r, 4, truncate), 25).await
}

/// Runs transactions `next` makes until `until`, pausing up to `pause_ms`
/// between them.
async fn writer(
    url: String,
    mut r: Rng,
    until: Instant,
    stats: Arc<Stats>,
    next: impl Fn(&mut Rng) -> String,
    pause_ms: i64,
) {
    let mut conn: Option<tokio_postgres::Client> = None;
    while Instant::now() < until {
        let c = match &conn {
            Some(c) if !c.is_closed() => c,
            _ => match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                Ok((c, task)) => {
                    tokio::spawn(task);
                    conn.insert(c)
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        match c.batch_execute(&next(&mut r)).await {
            Ok(()) => Stats::inc(&stats.sql_txns),
            Err(_) => {
                Stats::inc(&stats.sql_failed);
                let _ = c.batch_execute("ROLLBACK").await;
            }
        }
        if pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(r.range(0, pause_ms) as u64)).await;
        }
    }
}

fn int(i: i64) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Int(i)),
    }
}

fn text(s: String) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::String(s)),
    }
}

/// Runs random mutations through the unary `Mutate` until `until`, each
/// on a random one of `addrs`.
pub async fn mutator(addrs: Vec<String>, mut r: Rng, until: Instant, stats: Arc<Stats>) {
    while Instant::now() < until {
        let addr = super::pick_node(&addrs, &mut r);
        let ok = mutate_once(&addr, &mut r, &stats).await;
        Stats::inc(if ok {
            &stats.mutations
        } else {
            &stats.mutations_failed
        });
        tokio::time::sleep(Duration::from_millis(r.range(5, 60) as u64)).await;
    }
}

/// One random mutation as a random identity; whether it was applied. An
/// INTERNAL answer is counted (it fails the schedule).
pub async fn mutate_once(addr: &str, r: &mut Rng, stats: &Stats) -> bool {
    {
        let who = *r.pick(&PEOPLE);
        let id = r.range(1, 40);
        let (name, params) = match r.range(0, 3) {
            0 => (
                "add_item",
                vec![
                    ("id", int(id)),
                    ("list_id", int(r.range(1, 3))),
                    ("title", text(word(r))),
                    ("pos", int(r.range(0, 20))),
                ],
            ),
            1 => (
                "rename_item",
                vec![("id", int(id)), ("title", text(word(r)))],
            ),
            2 => (
                "move_item",
                vec![("id", int(id)), ("pos", int(r.range(0, 20)))],
            ),
            _ => ("delete_item", vec![("id", int(id))]),
        };
        let req = pb::MutateRequest {
            mutation: name.into(),
            params: params.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            session_id: String::new(),
        };
        match connect(addr, who.token).await {
            Ok(mut c) => match tokio::time::timeout(Duration::from_secs(10), c.mutate(req)).await {
                Ok(Ok(_)) => true,
                Ok(Err(status)) => {
                    if status.code() == tonic::Code::Internal {
                        Stats::inc(&stats.internal_errors);
                        println!("INTERNAL: mutation {name} answered {status}");
                    }
                    false
                }
                Err(_) => false,
            },
            Err(_) => false,
        }
    }
}
