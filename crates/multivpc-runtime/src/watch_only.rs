//! Watch-only mode: a binary whose reconciler has not landed yet still keeps a real cache of its
//! primary resource and reports ready once it is synced, so its deployment, RBAC, probes and
//! metrics can be exercised honestly. It changes nothing in the cluster.

use std::{fmt::Debug, hash::Hash};

use futures::StreamExt;
use kube::{
    Api, Resource,
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;

/// Mirrors `api` into a local store until `shutdown`, marking `readiness` once synced.
pub async fn run<K>(
    api: Api<K>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    let synced = {
        let readiness = readiness.clone();
        async move {
            if store.wait_until_ready().await.is_ok() {
                readiness.set_synced(true);
                tracing::info!(
                    objects = store.state().len(),
                    "cache synced (watch-only: no reconciler yet)"
                );
            }
        }
    };
    tokio::spawn(synced);
    let mut stream = std::pin::pin!(stream.take_until(shutdown.cancelled_owned()));
    while let Some(event) = stream.next().await {
        if let Err(err) = event {
            tracing::warn!(%err, "watch error; retrying with backoff");
        }
    }
    Ok(())
}
