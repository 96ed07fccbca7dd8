//! Whether an API server keeps a GatewayExIp's `spec.tunnels`. A CRD installed before the
//! field existed (Helm installs CRDs but never upgrades them) drops it from a create and
//! refuses a server-side apply that sets it ("field not declared in schema"): comparing what
//! is stored with what was written would rewrite the object on every pass, and every apply
//! would fail. So a write's answer is checked: when the field was dropped or refused, it is
//! left out of what is written to that API server for [`RETRY_AFTER`], then tried again (once
//! the CRD is upgraded, the addresses appear within that time).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use multivpc_api::GatewayExIp;

/// How long a server that dropped the field is written to without it.
pub const RETRY_AFTER: Duration = Duration::from_secs(600);

/// What this cluster's API server and the broker's keep.
#[derive(Clone, Default)]
pub struct Servers {
    pub local: TunnelsKept,
    pub broker: TunnelsKept,
}

/// What one API server (this cluster's, or the broker's) is known to keep.
#[derive(Clone, Default)]
pub struct TunnelsKept {
    dropped_at: Arc<Mutex<Option<Instant>>>,
}

impl TunnelsKept {
    fn dropped_at(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.dropped_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether writes to this server carry the field now.
    pub fn kept(&self) -> bool {
        self.dropped_at()
            .is_none_or(|at| at.elapsed() >= RETRY_AFTER)
    }

    /// Notes what the server stored for a write of `sent`. True when it has just been found to
    /// drop the field (to be reported once).
    pub fn observe(&self, sent: &GatewayExIp, stored: &GatewayExIp) -> bool {
        self.note(sent, stored.spec.tunnels.is_empty())
    }

    /// Notes a write of `sent` the server refused. True when the refusal says the field is not
    /// in its schema and that is news (to be reported once); the write is then retried without.
    pub fn observe_refusal(&self, sent: &GatewayExIp, err: &kube::Error) -> bool {
        let undeclared = matches!(err, kube::Error::Api(s)
            if s.message.contains(".spec.tunnels") && s.message.contains("not declared in schema"));
        undeclared && self.note(sent, true)
    }

    fn note(&self, sent: &GatewayExIp, missing: bool) -> bool {
        let dropped = !sent.spec.tunnels.is_empty() && missing;
        let mut at = self.dropped_at();
        let newly = dropped && at.is_none_or(|t| t.elapsed() >= RETRY_AFTER);
        if dropped {
            *at = Some(Instant::now());
        } else if !sent.spec.tunnels.is_empty() {
            *at = None;
        }
        newly
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multivpc_api::{GatewayExIpSpec, TunnelAddress};

    fn obj(tunnels: usize) -> GatewayExIp {
        GatewayExIp::new(
            "gw1-c1",
            GatewayExIpSpec {
                externalip: "172.18.0.2".into(),
                globalnetcidr: "242.1.0.0/16".into(),
                tunnels: (0..tunnels)
                    .map(|i| TunnelAddress {
                        cluster_id: format!("c{i}"),
                        gateway_name: "gw1".into(),
                        interface_addr: "10.100.0.1/24".into(),
                    })
                    .collect(),
            },
        )
    }

    #[test]
    fn a_server_that_drops_the_field_is_written_without_it_until_the_retry() {
        let keeps = TunnelsKept::default();
        assert!(keeps.kept());
        // Stored as sent: nothing to note.
        assert!(!keeps.observe(&obj(2), &obj(2)));
        assert!(keeps.kept());
        // Nothing sent, nothing stored: no evidence either way.
        assert!(!keeps.observe(&obj(0), &obj(0)));
        assert!(keeps.kept());
        // Dropped: noticed once, then written without the field.
        assert!(keeps.observe(&obj(2), &obj(0)));
        assert!(!keeps.kept());
        assert!(!keeps.observe(&obj(2), &obj(0)), "reported once");
        // After the retry time, it is tried again; kept this time, it stays on.
        *keeps.dropped_at() = Some(Instant::now() - RETRY_AFTER);
        assert!(keeps.kept());
        assert!(!keeps.observe(&obj(1), &obj(1)));
        assert!(keeps.kept());
    }

    #[test]
    fn an_apply_refused_for_the_undeclared_field_counts_as_dropped() {
        let refusal = |message: &str| {
            kube::Error::Api(
                serde_json::from_value(serde_json::json!({
                    "status": "Failure", "code": 500, "reason": "", "message": message,
                }))
                .unwrap(),
            )
        };
        let keeps = TunnelsKept::default();
        // Another refusal says nothing about the field.
        assert!(!keeps.observe_refusal(&obj(1), &refusal("etcdserver: request timed out")));
        assert!(keeps.kept());
        // What an API server answers a server-side apply the CRD's schema lacks a field for.
        let undeclared = refusal(
            "failed to create typed patch object (ns/gw1-c1; kubeovn.ustc.io/v1, Kind=GatewayExIp): .spec.tunnels: field not declared in schema",
        );
        assert!(keeps.observe_refusal(&obj(1), &undeclared));
        assert!(!keeps.kept());
        assert!(
            !keeps.observe_refusal(&obj(1), &undeclared),
            "reported once"
        );
    }
}
