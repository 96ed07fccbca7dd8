//! Kubernetes events, published the same way by every controller: reporter named after the
//! controller (instance = pod name), notes cut to the API's 1 KiB limit, and a failure to
//! publish logged, never fatal.
//!
//! Each event is created as is (events.k8s.io/v1), never aggregated into a series: the
//! controllers publish one event per change of state, not per attempt, so there is nothing to
//! aggregate. kube's `Recorder` keeps every event it published for six minutes to aggregate
//! them, which at 5000 tunnels converging was 5000 events held in memory (and a scan of them
//! all under a lock for each new one).

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as K8sEvent},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::PostParams,
    runtime::events::{EventType, Reporter},
};

/// Largest `note` the events.k8s.io API accepts.
const MAX_NOTE_BYTES: usize = 1024;

/// Publishes events on behalf of one controller.
#[derive(Clone)]
pub struct Events {
    client: Client,
    reporter: Reporter,
}

impl Events {
    /// A publisher reporting as `controller`, instance `$POD_NAME` when set.
    pub fn new(client: Client, controller: &str) -> Self {
        Self {
            client,
            reporter: Reporter {
                controller: controller.to_owned(),
                instance: std::env::var("POD_NAME").ok(),
            },
        }
    }

    /// Publishes one event about `regarding`, in its namespace (`default` for a cluster-scoped
    /// object).
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: impl Into<String>,
    ) {
        let event = self.event(
            regarding,
            type_,
            reason,
            action,
            note.into(),
            Timestamp::now(),
        );
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        // Boxed as the status apply is (crate::status::apply_status says why).
        if let Err(err) = Box::pin(api.create(&PostParams::default(), &event)).await {
            tracing::warn!(%err, reason, "could not publish event");
        }
    }

    fn event(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
        now: Timestamp,
    ) -> K8sEvent {
        let controller = &self.reporter.controller;
        K8sEvent {
            metadata: ObjectMeta {
                // Unique per object and nanosecond, as kubectl's and client-go's are.
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                namespace: regarding.namespace.clone(),
                ..Default::default()
            },
            action: Some(action.to_owned()),
            reason: Some(reason.to_owned()),
            note: Some(truncate(note)),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            ..Default::default()
        }
    }
}

/// Cuts `note` to the API limit on a character boundary, marking the cut with `…`.
fn truncate(mut note: String) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note;
    }
    let mut cut = MAX_NOTE_BYTES - '…'.len_utf8();
    while !note.is_char_boundary(cut) {
        cut -= 1;
    }
    note.truncate(cut);
    note.push('…');
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_event_names_its_object_reporter_and_time() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let events = Events {
            client: Client::try_from(config).unwrap(),
            reporter: Reporter {
                controller: "tunnel-manager".into(),
                instance: None,
            },
        };
        let regarding = ObjectReference {
            name: Some("t1".into()),
            namespace: Some("ns1".into()),
            ..Default::default()
        };
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let e = events.event(
            &regarding,
            EventType::Warning,
            "ConvergeFailed",
            "Converge",
            "x".repeat(5000),
            now,
        );
        assert_eq!(
            e.metadata.name.as_deref(),
            Some(format!("t1.{:x}", now.as_nanosecond()).as_str())
        );
        assert_eq!(e.metadata.namespace.as_deref(), Some("ns1"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reporting_instance.as_deref(), Some("tunnel-manager"));
        assert_eq!(e.regarding, Some(regarding));
        assert!(e.series.is_none());
        assert!(e.note.unwrap().len() <= MAX_NOTE_BYTES);
    }

    #[test]
    fn notes_fit_the_api_limit() {
        assert_eq!(truncate("short".into()), "short");
        let long = "é".repeat(2000);
        let cut = truncate(long);
        assert!(
            cut.len() <= MAX_NOTE_BYTES && cut.ends_with('…'),
            "{}",
            cut.len()
        );
        assert_eq!(truncate("a".repeat(MAX_NOTE_BYTES)).len(), MAX_NOTE_BYTES);
    }
}
