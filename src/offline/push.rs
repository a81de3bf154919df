//! Push: a bundle of row intents in numbered chunks, applied all or nothing
//! in one transaction under the caller's identity, exactly once per
//! (client id, bundle id).

use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Code, Status, Streaming};

use super::intent::Met;
use super::state::{check_client, db_status, Offline};
use crate::engine::Identity;
use crate::ops::offline_metrics::{self, PushOutcome, Resolution};
use crate::proto::{self as pb, intent_result::Status as Outcome};
use crate::wire::status::status;

/// A bundle as received: its name, intents and a digest of them.
struct Bundle {
    client_id: String,
    bundle_id: u64,
    intents: Vec<pb::RowIntent>,
    digest: Vec<u8>,
}

/// Reads the chunks of one bundle, checking order, identity and limits.
async fn collect(
    o: &Offline,
    id: &Identity,
    stream: &mut Streaming<pb::PushChunk>,
) -> Result<Bundle, Status> {
    let cfg = &o.inner.cfg;
    let mut bundle: Option<(String, u64)> = None;
    let mut intents = Vec::new();
    let mut bytes = 0usize;
    let mut next = 0u32;
    let mut ended = false;
    while let Some(chunk) = stream.message().await? {
        if ended {
            return Err(status(
                Code::InvalidArgument,
                "a chunk arrived after the chunk with last = true: one bundle per stream",
            ));
        }
        match &bundle {
            None => {
                check_client(o, id, &chunk.client_id).await?;
                bundle = Some((chunk.client_id.clone(), chunk.bundle_id));
            }
            Some((c, b)) if *c != chunk.client_id || *b != chunk.bundle_id => {
                return Err(status(
                    Code::InvalidArgument,
                    format!(
                        "chunk {} names bundle {} of client `{}`, but the stream began bundle {b} of client `{c}`: one bundle per stream",
                        chunk.chunk_index, chunk.bundle_id, chunk.client_id
                    ),
                ));
            }
            Some(_) => {}
        }
        if chunk.chunk_index != next {
            return Err(status(
                Code::InvalidArgument,
                format!(
                    "chunk_index {} arrived where {next} was expected: send chunks 0, 1, 2, ... in order",
                    chunk.chunk_index
                ),
            ));
        }
        if chunk.intents.len() > cfg.max_chunk_rows as usize {
            return Err(status(
                Code::ResourceExhausted,
                format!(
                    "chunk {next} holds {} row intents, more than offline.max_chunk_rows = {}: send smaller chunks",
                    chunk.intents.len(),
                    cfg.max_chunk_rows
                ),
            ));
        }
        if intents.len() + chunk.intents.len() > cfg.max_push_rows as usize {
            return Err(status(
                Code::ResourceExhausted,
                format!(
                    "the bundle holds more than offline.max_push_rows = {} row intents: split it into several bundles",
                    cfg.max_push_rows
                ),
            ));
        }
        bytes += chunk
            .intents
            .iter()
            .map(Message::encoded_len)
            .sum::<usize>();
        if bytes > cfg.max_push_bytes as usize {
            return Err(status(
                Code::ResourceExhausted,
                format!(
                    "the bundle's row intents exceed offline.max_push_bytes = {} bytes: split it into several bundles",
                    cfg.max_push_bytes
                ),
            ));
        }
        next += 1;
        ended = chunk.last;
        intents.extend(chunk.intents);
    }
    let Some((client_id, bundle_id)) = bundle else {
        return Err(status(
            Code::InvalidArgument,
            "the push stream held no chunk",
        ));
    };
    if !ended {
        return Err(status(
            Code::InvalidArgument,
            format!("the push stream ended after {next} chunks without one with last = true; nothing was applied"),
        ));
    }
    let mut h = Sha256::new();
    for i in &intents {
        // Map order is not canonical: hash the values sorted by column.
        h.update(i.table.as_bytes());
        h.update(i.op.to_be_bytes());
        h.update(i.base_version.to_be_bytes());
        h.update(i.client_time_unix_ms.to_be_bytes());
        let mut cols: Vec<_> = i.values.iter().collect();
        cols.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in cols {
            h.update(k.as_bytes());
            h.update(v.encode_to_vec());
        }
        h.update([0xff]);
    }
    Ok(Bundle {
        client_id,
        bundle_id,
        intents,
        digest: h.finalize().to_vec(),
    })
}

/// Handles one Push call. A bundle whose transaction loses to a concurrent
/// one (deadlock, serialization failure) is run again from the start, as a
/// mutation is, `database.mutation_retries` times before it answers
/// ABORTED. A retry cannot apply a bundle twice: the lost transaction
/// rolled back whole, and each attempt first looks for the bundle's stored
/// result under the bundle's lock.
pub async fn push(
    o: &Offline,
    id: &Identity,
    mut stream: Streaming<pb::PushChunk>,
) -> Result<pb::PushResponse, Status> {
    let bundle = collect(o, id, &mut stream).await?;
    let r = with_retries(o, id, &bundle).await;
    match &r {
        Ok((resp, met)) => {
            let outcome = if resp.replayed {
                PushOutcome::Replayed
            } else if resp.applied {
                PushOutcome::Applied
            } else {
                PushOutcome::Refused
            };
            let rows = if outcome == PushOutcome::Applied {
                bundle.intents.len()
            } else {
                0
            };
            offline_metrics::push(outcome, rows);
            // A refused bundle's writes did not happen: its conflicts count
            // as refusals, whatever else its intents met.
            for &(policy, resolution) in met {
                offline_metrics::conflict(policy, resolution);
            }
        }
        Err(_) => offline_metrics::push(PushOutcome::Failed, 0),
    }
    r.map(|(resp, _)| resp)
}

/// Applies `bundle`, again after a lost transaction (see [`push`]).
async fn with_retries(
    o: &Offline,
    id: &Identity,
    bundle: &Bundle,
) -> Result<(pb::PushResponse, Met), Status> {
    let mut c = o.conn().await?;
    let retries = o.inner.ctx.mutation_retries;
    let mut tries = 0u32;
    loop {
        match attempt(o, id, &mut c, bundle).await {
            Err(s) if s.code() == Code::Aborted && tries < retries => {
                tries += 1;
                tracing::debug!(
                    client_id = %bundle.client_id,
                    bundle_id = bundle.bundle_id,
                    tries,
                    "push lost to a concurrent transaction, retrying: {}",
                    s.message()
                );
                // A short random pause, growing with each try, so the
                // transactions that collided do not collide again in step.
                let pause = rand::random_range(1..=10u64 << tries.min(6));
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            Err(s) if s.code() == Code::Aborted => {
                return Err(status(
                    Code::Aborted,
                    format!(
                        "{} (tried {} times, database.mutation_retries = {retries}); nothing of the bundle applied, push it again",
                        s.message(),
                        tries + 1
                    ),
                ))
            }
            r => return r,
        }
    }
}

/// One try at applying `bundle` in its own transaction on `c`; with the
/// conflicts it met.
async fn attempt(
    o: &Offline,
    id: &Identity,
    c: &mut deadpool_postgres::Object,
    bundle: &Bundle,
) -> Result<(pb::PushResponse, Met), Status> {
    let Bundle {
        client_id,
        bundle_id,
        intents,
        digest,
    } = bundle;
    let (client_id, bundle_id, digest) = (client_id.as_str(), *bundle_id, digest.as_slice());
    if let Some(r) = stored(&*c, client_id, bundle_id, digest).await? {
        return Ok((r, Met::new()));
    }
    let tx = c
        .transaction()
        .await
        .map_err(|e| db_status("starting the push", e))?;
    // Copies of one bundle on several streams take turns here: a later copy
    // waits for the first to commit (or roll back) and then finds its stored
    // result, instead of applying against the rows the first one wrote.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))",
        &[&client_id, &(bundle_id as i64)],
    )
    .await
    .map_err(|e| db_status("starting the push", e))?;
    if let Some(r) = stored(&tx, client_id, bundle_id, digest).await? {
        return Ok((r, Met::new()));
    }
    super::scopes::enter(o, &tx, id).await?;
    // The caller's scopes as this transaction sees them.
    let mine = super::scopes::scopes_on(o, &tx, id).await?;
    tx.query(
        "SELECT set_config('arcana_offline.client_id', $1, true), \
         set_config('arcana_offline.bundle_id', $2, true)",
        &[&client_id, &(bundle_id as i64).to_string()],
    )
    .await
    .map_err(|e| db_status("starting the push", e))?;
    // Foreign keys that are deferrable are checked at commit, so their
    // rows may come in any order; the others are met by the order below.
    tx.batch_execute("SET CONSTRAINTS ALL DEFERRED")
        .await
        .map_err(|e| db_status("starting the push", e))?;
    let mut results = vec![pb::IntentResult::default(); intents.len()];
    let mut refused = false;
    let mut met = Met::new();
    for i in super::order::order(
        intents,
        |t| o.table(t).map_or(0, |s| s.rank),
        |i| row_of(o, i),
    ) {
        let r = super::intent::apply(o, id, &mine, &tx, i, intents[i].clone(), &mut met).await?;
        refused |= r.status == Outcome::Conflict as i32;
        results[i] = r;
    }
    if refused {
        // Nothing of a refused bundle applies; it is not stored, so the
        // device may rebase it and send it again under the same id.
        drop(tx);
        met.retain(|(_, r)| *r == Resolution::Refused);
        return Ok((
            pb::PushResponse {
                replayed: false,
                applied: false,
                committed: Vec::new(),
                results,
            },
            met,
        ));
    }
    // Sequence now rather than at commit, to answer with the sequences.
    tx.batch_execute(&format!(
        "SET CONSTRAINTS arcana_offline.{} IMMEDIATE",
        super::schema::SEQUENCE_TRIGGER
    ))
    .await
    .map_err(|e| db_status("sequencing the bundle", e))?;
    let committed = tx
        .query(
            "SELECT scope, max(seq) FROM arcana_offline.changes WHERE xid = txid_current() \
             GROUP BY scope ORDER BY scope",
            &[],
        )
        .await
        .map_err(|e| db_status("sequencing the bundle", e))?
        .iter()
        .map(|r| pb::ScopeSequence {
            scope: r.get(0),
            sequence: r.get::<_, i64>(1) as u64,
        })
        .collect();
    let response = pb::PushResponse {
        replayed: false,
        applied: true,
        committed,
        results,
    };
    let inserted = tx
        .query_opt(
            "INSERT INTO arcana_offline.bundles (client_id, bundle_id, result, digest) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1",
            &[
                &client_id,
                &(bundle_id as i64),
                &response.encode_to_vec(),
                &digest,
            ],
        )
        .await
        .map_err(|e| db_status("recording the bundle", e))?;
    if inserted.is_none() {
        // The same bundle committed meanwhile on another stream.
        drop(tx);
        return stored(&*c, client_id, bundle_id, digest)
            .await?
            .map(|r| (r, Met::new()))
            .ok_or_else(|| {
                status(
                    Code::Aborted,
                    "the bundle is being applied concurrently: retry",
                )
            });
    }
    tx.commit()
        .await
        .map_err(|e| db_status("committing the bundle", e))?;
    Ok((response, met))
}

/// An intent's row: its table and the encoded values of the table's key
/// columns (the whole intent when the table is not synced; applying it
/// fails anyway).
fn row_of(o: &Offline, i: &pb::RowIntent) -> Vec<u8> {
    let mut out = i.table.as_bytes().to_vec();
    out.push(0);
    match o.table(&i.table) {
        Some(t) => {
            for (k, _) in &t.key {
                if let Some(v) = i.values.get(k) {
                    out.extend(v.encode_to_vec());
                }
                out.push(0xff);
            }
        }
        None => out.extend(i.encode_to_vec()),
    }
    out
}

/// The stored result of a bundle that already committed, marked replayed;
/// refused when the replay's intents differ from what committed.
async fn stored<C: deadpool_postgres::GenericClient>(
    c: &C,
    client_id: &str,
    bundle_id: u64,
    digest: &[u8],
) -> Result<Option<pb::PushResponse>, Status> {
    let row = c
        .query_opt(
            "WITH RECURSIVE lineage(id) AS (SELECT $1::text UNION \
                 SELECT c.replaces FROM arcana_offline.clients c JOIN lineage l ON c.client_id = l.id \
                 WHERE c.replaces IS NOT NULL) \
             SELECT result, digest FROM arcana_offline.bundles \
             WHERE client_id IN (SELECT id FROM lineage) AND bundle_id = $2 LIMIT 1",
            &[&client_id, &(bundle_id as i64)],
        )
        .await
        .map_err(|e| db_status("reading the bundle log", e))?;
    row.map(|r| {
        if r.get::<_, &[u8]>(1) != digest {
            return Err(status(
                Code::InvalidArgument,
                format!(
                    "bundle {bundle_id} of client `{client_id}` already committed with other row intents: a replay must resend it unchanged, new writes need a new bundle id"
                ),
            ));
        }
        let bytes: Vec<u8> = r.get(0);
        let mut resp = pb::PushResponse::decode(bytes.as_slice()).map_err(|e| {
            status(
                Code::Internal,
                format!("a stored bundle result is unreadable: {e}"),
            )
        })?;
        resp.replayed = true;
        Ok(resp)
    })
    .transpose()
}
