//! kube's finalizer helper with an idempotent add. kube adds the finalizer with a JSON patch
//! that first tests the finalizer list it saw; a reconcile that reads a cache which has not yet
//! seen its own earlier add sends a stale test, and the API server refuses it (HTTP 422), about
//! once per object at start-up. Here the add is a server-side apply of just this finalizer
//! (`metadata.finalizers` is a set), which succeeds whatever the list holds now and leaves other
//! finalizers alone, and the object it returns goes straight on to `Apply`. Removal stays kube's
//! (test the finalizer at its index, then remove it), so another controller's finalizer is never
//! taken by mistake; an object already gone when its finalizer is removed is done, not an error.
//! The object it works on is the newest this process knows ([`OwnWrites`]), and its add is
//! recorded there, so a reconcile that runs before the cache has seen the add does not repeat it.

use std::{fmt::Debug, sync::Arc};

use futures::TryFuture;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        finalizer::{self as kube_finalizer, Error, Event},
    },
};
use serde::{Serialize, de::DeserializeOwned};

use crate::own_writes::OwnWrites;

/// Runs `reconcile` for `obj` with finalizer `name`, as kube's `finalizer` does: `Apply` once the
/// finalizer is on the object, `Cleanup` when it is being deleted (the finalizer goes once
/// cleanup succeeds). `manager` is the field manager that owns the finalizer.
pub async fn finalizer<K, F, Fut>(
    api: &Api<K>,
    name: &str,
    manager: &str,
    writes: &OwnWrites<K>,
    obj: Arc<K>,
    reconcile: F,
) -> Result<Action, Error<Fut::Error>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
    F: FnOnce(Event<K>) -> Fut,
    Fut: TryFuture<Ok = Action>,
    Fut::Error: std::error::Error + 'static,
{
    let obj = writes.newest(obj);
    let has = obj.finalizers().iter().any(|f| f == name);
    if has || obj.meta().deletion_timestamp.is_some() {
        return match kube_finalizer::finalizer(api, name, obj, reconcile).await {
            // Gone since the cache saw it: an earlier cleanup released it and the API server
            // deleted it, so there is nothing left to release.
            Err(Error::RemoveFinalizer(kube::Error::Api(s))) if s.code == 404 => {
                Ok(Action::await_change())
            }
            other => other,
        };
    }
    let object_name = obj.meta().name.clone().ok_or(Error::UnnamedObject)?;
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"finalizers": [name]},
    });
    let updated = Box::pin(api.patch(
        &object_name,
        &PatchParams::apply(&format!("{manager}-finalizer")).force(),
        &Patch::Apply(&patch),
    ))
    .await
    .map_err(Error::AddFinalizer)?;
    let updated = writes.wrote(&obj, updated);
    kube_finalizer::finalizer(api, name, updated, reconcile).await
}
