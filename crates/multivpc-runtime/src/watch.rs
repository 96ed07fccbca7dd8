//! Watches that one bad object cannot stop.
//!
//! kube's typed `list` decodes the whole list in one go, so a single object of the right kind
//! but the wrong shape (a Go-operator GatewayExIp after a CRD swap, a hand-edited Vpc, a
//! hostile broker copy) fails every list and the cache never syncs. Here each object is
//! decoded on its own ([`Decoded`]); one that does not decode is treated as absent — skipped,
//! counted in `multivpc_watch_undecodable_objects_total{kind}` and logged once per object
//! version (its name and the decoding error, never its content) — and every other object keeps
//! flowing.

use std::{borrow::Cow, collections::BTreeMap, fmt::Debug, sync::Arc, time::Duration};

use futures::{Stream, StreamExt, future};
use kube::{
    Api, Resource,
    api::ObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use prometheus::{IntCounterVec, Opts, Registry};
use serde::{Deserialize, Deserializer, de::DeserializeOwned};

use crate::admin::{CacheSync, Probes};

/// The longest decoding error logged (a serde message can quote a value).
const MAX_ERROR_LEN: usize = 300;

/// An object of kind `K` as the API server sent it: decoded, or kept to its metadata and the
/// reason it does not decode.
#[derive(Clone, Debug)]
pub enum Decoded<K> {
    Object(K),
    /// The metadata is boxed: most objects decode, and the enum stays the size of `K`.
    Undecodable {
        metadata: Box<ObjectMeta>,
        error: String,
    },
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Decoded<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Ok(match K::deserialize(&value) {
            Ok(object) => Self::Object(object),
            Err(err) => Self::Undecodable {
                metadata: Box::new(
                    value
                        .get("metadata")
                        .and_then(|m| ObjectMeta::deserialize(m).ok())
                        .unwrap_or_default(),
                ),
                error: truncate(err.to_string()),
            },
        })
    }
}

fn truncate(mut text: String) -> String {
    if text.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

impl<K: Resource> Resource for Decoded<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Object(o) => o.meta(),
            Self::Undecodable { metadata, .. } => metadata,
        }
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Self::Object(o) => o.meta_mut(),
            Self::Undecodable { metadata, .. } => metadata,
        }
    }
}

/// What a cached kind must be: a statically typed resource that decodes from JSON and can be
/// shared across tasks.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
}

/// The counter of skipped objects, shared by every watch of a process.
#[derive(Clone)]
pub struct WatchMetrics {
    undecodable: IntCounterVec,
}

impl WatchMetrics {
    /// Registers `multivpc_watch_undecodable_objects_total{kind}` in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let undecodable = IntCounterVec::new(
            Opts::new(
                "multivpc_watch_undecodable_objects_total",
                "Object versions a watch skipped because they do not decode as their kind",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(undecodable.clone()))?;
        Ok(Self { undecodable })
    }
}

/// Turns a watch of [`Decoded`] objects into a watch of `K`: undecodable objects are reported
/// once per version and treated as absent. `known` returns the last decoded version of an
/// object (from the cache the stream feeds), so that an object that stops decoding, or is
/// deleted while undecodable, leaves the cache as a `Delete`.
pub fn skip_undecodable<K, S>(
    stream: S,
    metrics: WatchMetrics,
    known: impl Fn(&ObjectMeta) -> Option<K> + Send + 'static,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + Send + 'static,
    S: Stream<Item = Result<watcher::Event<Decoded<K>>, watcher::Error>> + Send,
{
    let kind = K::kind(&()).into_owned();
    let mut undecodable = Undecodable::default();
    stream.filter_map(move |event| {
        let out = match event {
            Err(err) => Some(Err(err)),
            Ok(event) => undecodable.filter(event, &kind, &metrics, &known).map(Ok),
        };
        future::ready(out)
    })
}

/// Which objects are undecodable now (key → resourceVersion), to report each version once.
#[derive(Default)]
struct Undecodable {
    current: BTreeMap<(String, String), String>,
    /// Keys seen undecodable during the list in progress (a relist forgets the others).
    listing: Option<Vec<(String, String)>>,
}

fn key(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl Undecodable {
    fn filter<K: Resource>(
        &mut self,
        event: watcher::Event<Decoded<K>>,
        kind: &str,
        metrics: &WatchMetrics,
        known: &impl Fn(&ObjectMeta) -> Option<K>,
    ) -> Option<watcher::Event<K>> {
        use watcher::Event;
        match event {
            Event::Init => {
                self.listing = Some(Vec::new());
                Some(Event::Init)
            }
            Event::InitDone => {
                if let Some(seen) = self.listing.take() {
                    self.current.retain(|k, _| seen.contains(k));
                }
                Some(Event::InitDone)
            }
            Event::InitApply(Decoded::Object(o)) => {
                self.current.remove(&key(o.meta()));
                Some(Event::InitApply(o))
            }
            Event::Apply(Decoded::Object(o)) => {
                self.current.remove(&key(o.meta()));
                Some(Event::Apply(o))
            }
            Event::Delete(Decoded::Object(o)) => {
                self.current.remove(&key(o.meta()));
                Some(Event::Delete(o))
            }
            Event::InitApply(Decoded::Undecodable { metadata, error }) => {
                self.report(&metadata, &error, kind, metrics);
                if let Some(seen) = &mut self.listing {
                    seen.push(key(&metadata));
                }
                None
            }
            Event::Apply(Decoded::Undecodable { metadata, error }) => {
                self.report(&metadata, &error, kind, metrics);
                known(&metadata).map(Event::Delete)
            }
            Event::Delete(Decoded::Undecodable { metadata, .. }) => {
                self.current.remove(&key(&metadata));
                known(&metadata).map(Event::Delete)
            }
        }
    }

    fn report(&mut self, meta: &ObjectMeta, error: &str, kind: &str, metrics: &WatchMetrics) {
        let version = meta.resource_version.clone().unwrap_or_default();
        if self.current.get(&key(meta)) == Some(&version) {
            return;
        }
        self.current.insert(key(meta), version.clone());
        metrics.undecodable.with_label_values(&[kind]).inc();
        tracing::warn!(
            kind,
            namespace = meta.namespace.as_deref().unwrap_or_default(),
            name = meta.name.as_deref().unwrap_or_default(),
            resource_version = version,
            error,
            "skipping an object that does not decode; the others go on"
        );
    }
}

/// The longest a failing watch waits before its next attempt (before jitter).
pub const BACKOFF_MAX: Duration = Duration::from_secs(8);

/// How a failing watch retries: 0.5 s doubling to [`BACKOFF_MAX`], with jitter, back to the
/// start after a minute without errors. kube's default climbs to 30 s: after a 20 s API server
/// outage, and the 410 that the restarted server answers every old resource version with, the
/// watches then came back a minute or more after the server did.
pub fn backoff() -> impl kube::runtime::utils::Backoff {
    kube::runtime::utils::ResetTimerBackoff::new(
        watcher::ExponentialBackoff::from(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(BACKOFF_MAX)
                .with_factor(2.0)
                .with_jitter()
                .without_max_times(),
        ),
        Duration::from_secs(60),
    )
}

/// Keeps a watch's errors to that watch: each is logged (with the kind), reported to the
/// liveness probe, left to the watch's own backoff, and never passed on. A kube `Controller`
/// that receives an error from any of its trigger streams pauses *all* of them for its trigger
/// backoff: after an API server restart, when every watch is answered 410 in turn, it delivered
/// no event for minutes (seen: a tunnel created after the restart was not reconciled five
/// minutes later).
pub fn isolate_errors<K: Send, S>(
    kind: String,
    probes: Probes,
    stream: S,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    stream.filter(move |event| {
        match event {
            Err(err) => {
                probes.liveness().watch_failed(&kind);
                tracing::warn!(kind, %err, "watch failed; retrying with backoff");
            }
            Ok(_) => probes.liveness().watch_progressed(&kind),
        }
        future::ready(event.is_ok())
    })
}

/// A cache of `api`'s objects (selected by `config`) and the stream that feeds it: each object
/// decoded on its own (see the module doc), retried with kube's default backoff (errors stay
/// here: [`isolate_errors`]), and counted in `caches` so the controller decides nothing before
/// it has listed. Poll the stream (give
/// it to the controller, or drain it) for the cache to fill.
///
/// The cached objects carry no `managedFields`: nothing but a GatewayExIp's provenance reads
/// them, and they are often the larger part of an object (at 5000 tunnels, tens of MiB). Use
/// [`reflect_trimmed`] for a kind whose writers matter.
pub fn reflect<K>(
    api: Api<Decoded<K>>,
    config: watcher::Config,
    caches: &CacheSync,
    metrics: &WatchMetrics,
) -> (
    Store<K>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K>,
)
where
    K: Watched,
{
    reflect_trimmed(api, config, caches, metrics, |o: &mut K| {
        o.meta_mut().managed_fields = None
    })
}

/// [`reflect`], with `trim` choosing what of each object the cache keeps, e.g. the part of its
/// `managedFields` (who wrote which field) a provenance check reads.
pub fn reflect_trimmed<K>(
    api: Api<Decoded<K>>,
    config: watcher::Config,
    caches: &CacheSync,
    metrics: &WatchMetrics,
    trim: fn(&mut K),
) -> (
    Store<K>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K>,
)
where
    K: Watched,
{
    let (store, writer) = reflector::store();
    let lookup = store.clone();
    let known = move |meta: &ObjectMeta| {
        let mut r = ObjectRef::<K>::new(meta.name.as_deref().unwrap_or_default());
        if let Some(ns) = &meta.namespace {
            r = r.within(ns);
        }
        lookup.get(&r).map(Arc::unwrap_or_clone)
    };
    let stream = skip_undecodable(
        watcher(api, config).backoff(backoff()),
        metrics.clone(),
        known,
    )
    .modify(trim)
    .reflect(writer);
    let kind = K::kind(&()).into_owned();
    (
        store,
        isolate_errors(kind, caches.probes().clone(), caches.track(stream)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;
    use k8s_openapi::api::core::v1::ConfigMap;
    use serde_json::json;

    #[derive(Clone, Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        metadata: ObjectMeta,
        #[allow(dead_code)]
        spec: StrictSpec,
    }
    #[derive(Clone, Debug, serde::Deserialize)]
    struct StrictSpec {
        #[allow(dead_code)]
        externalip: String,
    }

    #[test]
    fn a_bad_item_does_not_fail_the_list() {
        let list = json!({"items": [
            {"metadata": {"name": "good", "resourceVersion": "1"}, "spec": {"externalip": "1.2.3.4"}},
            {"metadata": {"name": "gw9.cluster9", "resourceVersion": "2"}, "spec": {"externalIp": "1.2.3.4"}},
        ]});
        let items: Vec<Decoded<Strict>> =
            serde_json::from_value(list["items"].clone()).expect("the list decodes");
        assert!(
            matches!(&items[0], Decoded::Object(o) if o.metadata.name.as_deref() == Some("good"))
        );
        match &items[1] {
            Decoded::Undecodable { metadata, error } => {
                assert_eq!(metadata.name.as_deref(), Some("gw9.cluster9"));
                assert!(error.contains("externalip"), "{error}");
            }
            other => panic!("expected undecodable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failing_watch_passes_its_events_on_and_keeps_its_errors() {
        let events: Vec<Result<watcher::Event<ConfigMap>, watcher::Error>> = vec![
            Ok(watcher::Event::Apply(cm("a", "1"))),
            Err(watcher::Error::NoResourceVersion),
            Ok(watcher::Event::Apply(cm("b", "2"))),
        ];
        let probes = Probes::default();
        let out: Vec<_> = isolate_errors("ConfigMap".into(), probes.clone(), stream::iter(events))
            .collect()
            .await;
        let names: Vec<_> = out
            .iter()
            .map(|e| match e {
                Ok(watcher::Event::Apply(o)) => o.metadata.name.clone().unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn errors_are_cut_short() {
        let long = "é".repeat(400);
        let cut = truncate(long);
        assert!(cut.len() <= MAX_ERROR_LEN + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }

    fn cm(name: &str, rv: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn bad(name: &str, rv: &str) -> Decoded<ConfigMap> {
        Decoded::Undecodable {
            metadata: Box::new(cm(name, rv).metadata),
            error: "missing field".into(),
        }
    }

    #[tokio::test]
    async fn undecodable_objects_are_skipped_counted_once_per_version_and_leave_the_cache() {
        use watcher::Event;
        let registry = Registry::new();
        let metrics = WatchMetrics::new(&registry).unwrap();
        let events: Vec<Result<Event<Decoded<ConfigMap>>, watcher::Error>> = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(Decoded::Object(cm("a", "1")))),
            Ok(Event::InitApply(bad("b", "2"))),
            Ok(Event::InitDone),
            // The same version again (a watch restart): not counted twice.
            Ok(Event::Apply(bad("b", "2"))),
            // A good object turns bad: it leaves the cache.
            Ok(Event::Apply(bad("a", "3"))),
            Ok(Event::Apply(Decoded::Object(cm("c", "4")))),
        ];
        let (store, writer) = reflector::store::<ConfigMap>();
        let lookup = store.clone();
        let known = move |meta: &ObjectMeta| {
            lookup
                .get(&ObjectRef::new(meta.name.as_deref().unwrap()).within("ns"))
                .map(Arc::unwrap_or_clone)
        };
        let out: Vec<_> = skip_undecodable(stream::iter(events), metrics, known)
            .reflect(writer)
            .collect()
            .await;
        assert_eq!(out.len(), 5, "{out:?}");
        let mut names: Vec<_> = store
            .state()
            .iter()
            .map(|o| o.metadata.name.clone().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["c"]);
        let text = {
            let mut buf = Vec::new();
            use prometheus::Encoder;
            prometheus::TextEncoder::new()
                .encode(&registry.gather(), &mut buf)
                .unwrap();
            String::from_utf8(buf).unwrap()
        };
        assert!(
            text.contains("multivpc_watch_undecodable_objects_total{kind=\"ConfigMap\"} 2"),
            "{text}"
        );
    }
}
