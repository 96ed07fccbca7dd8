//! Whether an API server keeps a GatewayExIp's `spec.tunnels`. A CRD installed before the
//! field existed (Helm installs CRDs but never upgrades them) drops it from every write, and
//! comparing what is stored with what was written would then rewrite the object on every pass.
//! So a write's answer is checked: when the field was dropped, it is left out of what is written
//! to that API server for [`RETRY_AFTER`], then tried again (once the CRD is upgraded, the
//! addresses appear within that time).

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
        let dropped = !sent.spec.tunnels.is_empty() && stored.spec.tunnels.is_empty();
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
}
