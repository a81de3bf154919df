//! Two-way offline sync (`OfflineService`): devices that keep their own
//! copy of rows push bundles of local writes and pull everyone else's
//! changes by per-scope sequence. See docs/OFFLINE.md.
//!
//! The change log lives in PostgreSQL (`schema.rs`), filled by triggers, so
//! every committed write is logged whoever made it.

mod follow;
mod intent;
mod order;
mod pull;
mod push;
mod quota;
mod retention;
pub mod schema;
mod scope_sql;
mod scopes;
mod service;
mod snapshot;
pub mod spec;

mod state;

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use crate::config::OfflineConfig;
pub use service::offline_service_server;
use state::Inner;
pub use state::{Offline, PROTOCOL_VERSION};

use crate::auth::Authenticator;
use crate::postgres::context::TxContext;

impl Offline {
    /// This service as a mount of the gRPC server, next to the Arcana
    /// service.
    pub fn mount(self) -> crate::grpc::server::Mount {
        let name = <offline_service_server::OfflineServiceServer<Offline> as tonic::server::NamedService>::NAME;
        crate::grpc::server::Mount::new(name, move |routes, max_message_bytes| {
            routes.add_service(
                offline_service_server::OfflineServiceServer::new(self.clone())
                    .max_decoding_message_size(max_message_bytes),
            )
        })
    }

    /// Checks the tables, installs the change log (when `install`), and
    /// starts the NOTIFY listener and the retention task, whose handles are
    /// returned for the caller to abort on shutdown.
    pub async fn start(
        cfg: &OfflineConfig,
        pool: Pool,
        database_url: &str,
        auth: Arc<dyn Authenticator>,
        ctx: TxContext,
    ) -> Result<(Offline, Vec<JoinHandle<()>>), String> {
        let mut client = pool
            .get()
            .await
            .map_err(|e| format!("offline: connecting to the database: {e}"))?;
        let tables = spec::resolve(&client, cfg).await?;
        if cfg.install {
            schema::install(&mut client, &tables, ctx.eval_role.as_deref()).await?;
        }
        drop(client);
        let (commits, _) = broadcast::channel(1024);
        let offline = Offline {
            inner: Arc::new(Inner {
                pool,
                auth,
                schema_hash: spec::schema_hash(cfg.schema_version, &tables),
                cfg: cfg.clone(),
                tables,
                ctx,
                commits,
                follows: quota::Quota::default(),
                snapshots: quota::Quota::default(),
                cursor_key: match &cfg.cursor_key {
                    Some(k) if !k.is_empty() => k.as_bytes().to_vec(),
                    _ => {
                        tracing::info!("offline.cursor_key is not set: snapshot cursors are signed with a key made at startup and do not survive a restart");
                        rand::random::<[u8; 32]>().to_vec()
                    }
                },
            }),
        };
        let listener =
            follow::spawn_listener(database_url.to_owned(), offline.inner.commits.clone()).await?;
        let retention = tokio::spawn(retention::run(offline.clone()));
        Ok((offline, vec![listener, retention]))
    }
}
