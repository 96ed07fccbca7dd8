//! The kubeovn-multivpc API: the three custom resources of group `kubeovn.ustc.io/v1`
//! (seed-compatible), typed views of the Kube-OVN and Submariner resources the controllers
//! read, and the small pure helpers every controller shares (conditions, network value types).

// kube-derive attribute lists repeat keys such as `type_ = "string"` per printer column.
#![allow(clippy::duplicated_attributes)]

pub mod conditions;
pub mod crd;
pub mod dns;
pub mod exip;
pub mod foreign;
pub mod gateway;
pub mod keys;
pub mod net;
pub mod tenancy;
pub mod tunnel;

pub use dns::{VpcDnsForward, VpcDnsForwardSpec, VpcDnsForwardStatus};
pub use exip::{GatewayExIp, GatewayExIpSpec, TunnelAddress};
pub use tunnel::{
    Encryption, TunnelHealth, TunnelType, VpcNatTunnel, VpcNatTunnelSpec, VpcNatTunnelStatus,
};

/// API group of the project's own resources (kept from the original operator).
pub const GROUP: &str = "kubeovn.ustc.io";
/// API version of the project's own resources.
pub const VERSION: &str = "v1";
