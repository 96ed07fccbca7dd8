//! The controller's `multivpc_*` metrics.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

/// Domain metrics of exip-syncer.
#[derive(Clone)]
pub struct SyncerMetrics {
    /// 1 while the broker's GatewayExIps are listed and watched, else 0.
    pub broker_connected: IntGauge,
    /// Broker sync writes and refusals by direction (to_broker, from_broker) and result
    /// (success, error, refused, conflict).
    pub broker_sync: IntCounterVec,
    /// Route moves by kind (failover, failback) and result (success, error, stranded).
    pub failovers: IntCounterVec,
    /// From the first observation of the failed gateway to routes and GatewayExIp updated.
    pub failover_duration: Histogram,
    /// GatewayExIps this cluster publishes.
    pub published: IntGauge,
}

impl SyncerMetrics {
    pub fn register(registry: &Registry) -> anyhow::Result<Self> {
        let m = Self {
            broker_connected: IntGauge::new(
                "multivpc_broker_connected",
                "1 while the Submariner broker's GatewayExIps are listed and watched",
            )?,
            broker_sync: IntCounterVec::new(
                Opts::new(
                    "multivpc_broker_sync_total",
                    "GatewayExIp broker sync operations by direction and result",
                ),
                &["direction", "result"],
            )?,
            failovers: IntCounterVec::new(
                Opts::new(
                    "multivpc_gateway_failover_total",
                    "VPC route moves between NAT gateways by kind and result",
                ),
                &["kind", "result"],
            )?,
            failover_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "multivpc_gateway_failover_duration_seconds",
                    "Time from a gateway observed unavailable to its routes and GatewayExIp moved",
                )
                .buckets(vec![
                    1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0,
                ]),
            )?,
            published: IntGauge::new(
                "multivpc_gatewayexips_published",
                "GatewayExIps published for this cluster's gateways",
            )?,
        };
        registry.register(Box::new(m.broker_connected.clone()))?;
        registry.register(Box::new(m.broker_sync.clone()))?;
        registry.register(Box::new(m.failovers.clone()))?;
        registry.register(Box::new(m.failover_duration.clone()))?;
        registry.register(Box::new(m.published.clone()))?;
        for d in ["to_broker", "from_broker"] {
            for r in ["success", "error", "refused", "conflict"] {
                m.broker_sync.with_label_values(&[d, r]);
            }
        }
        for k in ["failover", "failback"] {
            for r in ["success", "error", "stranded"] {
                m.failovers.with_label_values(&[k, r]);
            }
        }
        Ok(m)
    }
}
