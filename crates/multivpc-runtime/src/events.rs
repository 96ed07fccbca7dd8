//! Kubernetes events, published the same way by every controller: reporter named after the
//! controller (instance = pod name), notes cut to the API's 1 KiB limit, and a failure to
//! publish logged, never fatal.
//!
//! One event per change of state, not per attempt: an event identical (type, reason, note) to
//! the last one published about the same object is not sent again. A tunnel whose converge
//! keeps timing out said so once, instead of a PATCH of the event series on every retry.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

/// Largest `note` the events.k8s.io API accepts.
const MAX_NOTE_BYTES: usize = 1024;

/// Objects whose last event is remembered; past this, the memory starts afresh (at worst one
/// repeated event per object).
const MAX_REMEMBERED: usize = 50_000;

/// Publishes events on behalf of one controller.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    /// Per object (uid, else namespace/name): a hash of the last event published about it.
    last: Arc<Mutex<HashMap<String, u64>>>,
}

impl Events {
    /// A publisher reporting as `controller`, instance `$POD_NAME` when set.
    pub fn new(client: Client, controller: &str) -> Self {
        let reporter = Reporter {
            controller: controller.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            last: Arc::default(),
        }
    }

    /// Records `event` as the last about `regarding`; false when it already was.
    fn is_new(&self, regarding: &ObjectReference, event: &Event) -> bool {
        let object = regarding.uid.clone().unwrap_or_else(|| {
            format!(
                "{}/{}",
                regarding.namespace.as_deref().unwrap_or_default(),
                regarding.name.as_deref().unwrap_or_default()
            )
        });
        let mut h = DefaultHasher::new();
        (
            event.type_ == EventType::Warning,
            &event.reason,
            &event.note,
        )
            .hash(&mut h);
        let digest = h.finish();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.len() >= MAX_REMEMBERED && !last.contains_key(&object) {
            last.clear();
        }
        last.insert(object, digest) != Some(digest)
    }

    /// Publishes one event about `regarding`.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: impl Into<String>,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate(note.into())),
            action: action.to_owned(),
            secondary: None,
        };
        if !self.is_new(regarding, &event) {
            return;
        }
        if let Err(err) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(%err, reason, "could not publish event");
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
    async fn an_event_repeating_the_last_one_about_its_object_is_not_sent() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let events = Events::new(Client::try_from(config).unwrap(), "test");
        let obj = |uid: &str| ObjectReference {
            uid: Some(uid.into()),
            ..Default::default()
        };
        let ev = |reason: &str, note: &str| Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Reconcile".into(),
            secondary: None,
        };
        assert!(events.is_new(&obj("a"), &ev("ConvergeFailed", "timed out")));
        assert!(
            !events.is_new(&obj("a"), &ev("ConvergeFailed", "timed out")),
            "a retry"
        );
        assert!(
            events.is_new(&obj("b"), &ev("ConvergeFailed", "timed out")),
            "another object"
        );
        assert!(
            events.is_new(&obj("a"), &ev("ConvergeFailed", "exit 1")),
            "a new cause"
        );
        assert!(events.is_new(&obj("a"), &ev("Programmed", "ok")));
        assert!(
            events.is_new(&obj("a"), &ev("ConvergeFailed", "exit 1")),
            "failing again"
        );
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
