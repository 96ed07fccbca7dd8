//! Publishing, pure: the GatewayExIp each local gateway should have, compared with what exists.

use std::collections::BTreeMap;

use kube::{ResourceExt, api::ObjectMeta};
use multivpc_api::{
    GatewayExIp, GatewayExIpSpec, TunnelAddress,
    keys::{LABEL_ACTIVE_GATEWAY, LABEL_CLUSTER, LABEL_GATEWAY, LABEL_VPC, gateway_exip_name},
};

use crate::{
    failover::{self, RouteMove, VpcRoutes},
    model::Gateway,
};

/// A write to the local GatewayExIps.
// Plans are short-lived and small: boxing the objects would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Server-side apply of this object (created or changed).
    Apply {
        object: GatewayExIp,
        created: bool,
    },
    Delete {
        name: String,
    },
}

/// Inputs of one publishing pass.
pub struct Inputs<'a> {
    pub cluster_id: &'a str,
    pub namespace: &'a str,
    pub gateways: &'a BTreeMap<String, Gateway>,
    pub vpcs: &'a [VpcRoutes],
    pub moves: &'a [RouteMove],
    /// GatewayExIps in the namespace (own ones and copies).
    pub existing: &'a [GatewayExIp],
    /// The cluster's Globalnet CIDR, when known.
    pub globalnet_cidr: Option<&'a str>,
    /// The tunnel addresses to publish, by gateway ([`crate::model::tunnel_addresses`]).
    pub tunnels: &'a BTreeMap<String, Vec<TunnelAddress>>,
}

/// The object `gw` should be published as, `None` when it cannot be (yet).
fn desired(inputs: &Inputs, gw: &Gateway, existing: Option<&GatewayExIp>) -> Option<GatewayExIp> {
    if existing.is_none() && !gw.available() {
        return None; // Only ready gateways are published; once published, kept until deleted.
    }
    let carriers = inputs
        .vpcs
        .iter()
        .find(|v| v.name == gw.vpc)
        .map(|v| failover::carriers_after(v, inputs.gateways, inputs.moves))
        .unwrap_or_default();
    let moved: BTreeMap<String, String> = inputs
        .moves
        .iter()
        .map(|m| (m.from_gw.clone(), m.to_gw.clone()))
        .collect();
    let label = existing.and_then(|e| e.labels().get(LABEL_ACTIVE_GATEWAY).cloned());
    let active = failover::active_for(gw, label.as_deref(), &carriers, &moved);
    let externalip = inputs
        .gateways
        .get(&active)
        .and_then(|a| a.external_ip)
        .map(|ip| ip.to_string())
        .or_else(|| existing.map(|e| e.spec.externalip.clone()))?;
    let globalnetcidr = inputs
        .globalnet_cidr
        .map(str::to_owned)
        .or_else(|| existing.map(|e| e.spec.globalnetcidr.clone()))?;
    let labels: BTreeMap<String, String> = [
        (LABEL_CLUSTER, inputs.cluster_id),
        (LABEL_GATEWAY, gw.name.as_str()),
        (LABEL_VPC, gw.vpc.as_str()),
        (LABEL_ACTIVE_GATEWAY, active.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    Some(GatewayExIp {
        metadata: ObjectMeta {
            name: Some(gateway_exip_name(&gw.name, inputs.cluster_id)),
            namespace: Some(inputs.namespace.to_owned()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: GatewayExIpSpec {
            externalip,
            globalnetcidr,
            tunnels: inputs.tunnels.get(&gw.name).cloned().unwrap_or_default(),
        },
    })
}

/// True when `existing` already has `want`'s spec and labels.
pub fn up_to_date(existing: &GatewayExIp, want: &GatewayExIp) -> bool {
    existing.spec == want.spec
        && want
            .labels()
            .iter()
            .all(|(k, v)| existing.labels().get(k) == Some(v))
}

/// The writes that bring the published GatewayExIps in line with the gateways.
pub fn plan(inputs: &Inputs) -> Vec<Op> {
    let by_name: BTreeMap<String, &GatewayExIp> =
        inputs.existing.iter().map(|o| (o.name_any(), o)).collect();
    let mut ops = Vec::new();
    for gw in inputs.gateways.values() {
        let name = gateway_exip_name(&gw.name, inputs.cluster_id);
        let existing = by_name.get(&name).copied();
        let own = existing.filter(|e| e.is_own(inputs.cluster_id));
        let Some(want) = desired(inputs, gw, own) else {
            continue;
        };
        match own {
            Some(e) if up_to_date(e, &want) => {}
            _ => ops.push(Op::Apply {
                object: want,
                created: own.is_none(),
            }),
        }
    }
    for obj in inputs
        .existing
        .iter()
        .filter(|o| o.is_own(inputs.cluster_id))
    {
        let name = obj.name_any();
        let gateway = obj.labels().get(LABEL_GATEWAY).cloned().or_else(|| {
            name.strip_suffix(&format!("-{}", inputs.cluster_id))
                .map(str::to_owned)
        });
        if gateway.is_none_or(|g| !inputs.gateways.contains_key(&g)) {
            ops.push(Op::Delete { name });
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::failover::MoveKind;
    use crate::model::tests::gw;
    use multivpc_api::foreign::kubeovn::StaticRoute;

    fn exip(name: &str, labels: &[(&str, &str)], ip: &str) -> GatewayExIp {
        GatewayExIp {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("kube-system".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: GatewayExIpSpec {
                externalip: ip.into(),
                globalnetcidr: "242.1.0.0/16".into(),
                ..Default::default()
            },
        }
    }

    fn own(gw: &str, active: &str, ip: &str) -> GatewayExIp {
        exip(
            &format!("{gw}-c1"),
            &[
                (LABEL_CLUSTER, "c1"),
                (LABEL_GATEWAY, gw),
                (LABEL_VPC, "v1"),
                (LABEL_ACTIVE_GATEWAY, active),
            ],
            ip,
        )
    }

    fn inputs<'a>(
        gateways: &'a BTreeMap<String, Gateway>,
        vpcs: &'a [VpcRoutes],
        moves: &'a [RouteMove],
        existing: &'a [GatewayExIp],
    ) -> Inputs<'a> {
        Inputs {
            cluster_id: "c1",
            namespace: "kube-system",
            gateways,
            vpcs,
            moves,
            existing,
            globalnet_cidr: Some("242.1.0.0/16"),
            tunnels: &NO_TUNNELS,
        }
    }

    static NO_TUNNELS: BTreeMap<String, Vec<TunnelAddress>> = BTreeMap::new();

    #[test]
    fn tunnel_addresses_are_published_and_their_change_rewrites() {
        let g = gws(vec![gw("p", "v1", "10.1.0.254", Some("172.50.0.2"))]);
        let addresses: BTreeMap<String, Vec<TunnelAddress>> = [(
            "p".to_string(),
            vec![TunnelAddress {
                cluster_id: "c2".into(),
                gateway_name: "gw1".into(),
                interface_addr: "10.100.0.1/24".into(),
            }],
        )]
        .into();
        let with = |existing: &[GatewayExIp]| {
            plan(&Inputs {
                tunnels: &addresses,
                ..inputs(&g, &[], &[], existing)
            })
        };
        let ops = with(&[]);
        let [Op::Apply { object, .. }] = ops.as_slice() else {
            panic!("{ops:?}")
        };
        assert_eq!(object.spec.tunnels, addresses["p"]);
        // Published as wanted: nothing to do; without the addresses: rewritten.
        let mut published = object.clone();
        published.metadata.labels.get_or_insert_default();
        assert_eq!(with(std::slice::from_ref(&published)), vec![]);
        published.spec.tunnels.clear();
        assert_eq!(with(std::slice::from_ref(&published)).len(), 1);
    }

    fn gws(list: Vec<Gateway>) -> BTreeMap<String, Gateway> {
        list.into_iter().map(|g| (g.name.clone(), g)).collect()
    }

    #[test]
    fn ready_gateways_are_published_with_labels() {
        let g = gws(vec![
            gw("p", "v1", "10.1.0.254", Some("172.50.0.2")),
            gw("notyet", "v1", "10.1.0.9", None),
        ]);
        let ops = plan(&inputs(&g, &[], &[], &[]));
        assert_eq!(
            ops,
            vec![Op::Apply {
                object: own("p", "p", "172.50.0.2"),
                created: true
            }]
        );
        // Steady state: nothing to write.
        let existing = [own("p", "p", "172.50.0.2")];
        assert!(plan(&inputs(&g, &[], &[], &existing)).is_empty());
    }

    #[test]
    fn changes_update_and_deleted_gateways_are_unpublished_copies_untouched() {
        let g = gws(vec![gw("p", "v1", "10.1.0.254", Some("172.50.0.7"))]);
        let copy = exip(
            "r-c2",
            &[
                (LABEL_CLUSTER, "c2"),
                (multivpc_api::keys::SUBMARINER_CLUSTER_ID, "c2"),
            ],
            "172.50.0.9",
        );
        let existing = [
            own("p", "p", "172.50.0.2"),
            own("gone", "gone", "172.50.0.3"),
            copy,
        ];
        let ops = plan(&inputs(&g, &[], &[], &existing));
        assert_eq!(
            ops,
            vec![
                Op::Apply {
                    object: own("p", "p", "172.50.0.7"),
                    created: false
                },
                Op::Delete {
                    name: "gone-c1".into()
                },
            ]
        );
    }

    #[test]
    fn an_unready_published_gateway_keeps_its_object() {
        let g = gws(vec![gw("p", "v1", "10.1.0.254", None)]);
        let existing = [own("p", "p", "172.50.0.2")];
        assert!(plan(&inputs(&g, &[], &[], &existing)).is_empty());
    }

    #[test]
    fn failover_moves_the_primary_object_to_the_standby() {
        let g = gws(vec![
            gw("p", "v1", "10.1.0.254", None),
            gw("s", "v1", "10.1.0.253", Some("172.50.0.3")),
        ]);
        let vpcs = [VpcRoutes {
            name: "v1".into(),
            routes: vec![StaticRoute {
                cidr: "242.2.0.0/16".into(),
                next_hop_ip: "10.1.0.254".into(),
                ..Default::default()
            }],
        }];
        let moves = [RouteMove {
            vpc: "v1".into(),
            kind: MoveKind::Failover,
            from_gw: "p".into(),
            from_ip: "10.1.0.254".parse().unwrap(),
            to_gw: "s".into(),
            to_ip: "10.1.0.253".parse().unwrap(),
            since: Instant::now(),
        }];
        let existing = [own("p", "p", "172.50.0.2"), own("s", "s", "172.50.0.3")];
        let ops = plan(&inputs(&g, &vpcs, &moves, &existing));
        assert_eq!(
            ops,
            vec![Op::Apply {
                object: own("p", "s", "172.50.0.3"),
                created: false
            }]
        );
    }

    #[test]
    fn nothing_is_published_without_a_globalnet_cidr() {
        let g = gws(vec![gw("p", "v1", "10.1.0.254", Some("172.50.0.2"))]);
        let mut i = inputs(&g, &[], &[], &[]);
        i.globalnet_cidr = None;
        assert!(plan(&i).is_empty());
    }
}
