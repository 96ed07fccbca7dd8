//! Broker sync, pure: Submariner's broker conventions applied to GatewayExIps.
//!
//! - local → broker: own objects (label `multivpc.kubeovn.ustc.io/cluster` = this cluster, no
//!   foreign `submariner-io/clusterID`) are upserted into the broker namespace under the same
//!   name with `submariner-io/clusterID=<self>` and `submariner-io/originatingNamespace=<ns>`;
//!   broker objects carrying this cluster's ID with no local source are deleted.
//! - broker → local: objects of other clusters are copied into the local namespace (labels and
//!   spec; nothing else of the metadata); local copies whose broker source is gone are deleted.
//! - no echo: copies are never exported, own objects are never imported; a local object that
//!   is not a copy of the same cluster's object is never overwritten.
//! - broker objects are untrusted: one whose name, labels and clusterID do not agree without
//!   ambiguity is refused, and so is one whose values [`crate::trust`] refuses or that is
//!   beyond an import cap. A copy carries only the labels in [`IMPORTED_LABELS`], no
//!   annotations.

use std::collections::BTreeMap;

use kube::{ResourceExt, api::ObjectMeta};
use multivpc_api::{
    GatewayExIp,
    keys::{
        LABEL_ACTIVE_GATEWAY, LABEL_CLUSTER, LABEL_GATEWAY, LABEL_VPC, SUBMARINER_CLUSTER_ID,
        SUBMARINER_ORIGIN_NAMESPACE, gateway_exip_name,
    },
};

use crate::{
    publish::up_to_date,
    trust::{Caps, ImportPolicy},
};

/// The labels a copy of another cluster's object keeps (everything else is dropped).
pub const IMPORTED_LABELS: [&str; 6] = [
    SUBMARINER_CLUSTER_ID,
    SUBMARINER_ORIGIN_NAMESPACE,
    LABEL_CLUSTER,
    LABEL_GATEWAY,
    LABEL_VPC,
    LABEL_ACTIVE_GATEWAY,
];

/// Which way a write goes (the `direction` label of the sync counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    ToBroker,
    FromBroker,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Self::ToBroker => "to_broker",
            Self::FromBroker => "from_broker",
        }
    }
}

/// One write of a sync pass.
// Plans are short-lived and small: boxing the objects would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Create a new object; fails (and the next pass re-plans) if the name was taken meanwhile,
    /// so an export never overwrites another cluster's object.
    Create(GatewayExIp),
    Apply(GatewayExIp),
    Delete {
        name: String,
        namespace: String,
    },
}

/// An object the pass left alone on purpose, and why (logged once, counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub direction: Direction,
    pub name: String,
    /// `refused` (inconsistent foreign object) or `conflict` (would overwrite another's object).
    pub result: &'static str,
    pub reason: String,
}

/// The writes of one sync pass.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub to_broker: Vec<Op>,
    pub from_broker: Vec<Op>,
    pub skipped: Vec<Skipped>,
}

/// The broker copy of an own object.
pub fn export_copy(obj: &GatewayExIp, cluster_id: &str, broker_ns: &str) -> GatewayExIp {
    let mut labels = obj.labels().clone();
    labels.insert(SUBMARINER_CLUSTER_ID.into(), cluster_id.into());
    labels.insert(
        SUBMARINER_ORIGIN_NAMESPACE.into(),
        obj.namespace().unwrap_or_default(),
    );
    GatewayExIp {
        metadata: ObjectMeta {
            name: Some(obj.name_any()),
            namespace: Some(broker_ns.into()),
            labels: Some(labels),
            annotations: obj.metadata.annotations.clone(),
            ..Default::default()
        },
        spec: obj.spec.clone(),
    }
}

/// The local copy of another cluster's broker object: its spec and the allowed labels.
pub fn import_copy(obj: &GatewayExIp, local_ns: &str) -> GatewayExIp {
    let labels = obj
        .labels()
        .iter()
        .filter(|(k, _)| IMPORTED_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    GatewayExIp {
        metadata: ObjectMeta {
            name: Some(obj.name_any()),
            namespace: Some(local_ns.into()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: obj.spec.clone(),
    }
}

/// The cluster a local object is a copy of, if it is a copy (its `submariner-io/clusterID`
/// names another cluster).
pub fn copy_origin<'a>(obj: &'a GatewayExIp, cluster_id: &str) -> Option<&'a str> {
    obj.labels()
        .get(SUBMARINER_CLUSTER_ID)
        .map(String::as_str)
        .filter(|c| *c != cluster_id)
}

/// How a broker object is treated by this cluster's import.
#[derive(Debug, PartialEq, Eq)]
pub enum Remote<'a> {
    /// Another cluster's object: import it.
    Import { origin: &'a str },
    /// Not for import: this cluster's own export, or no clusterID (not synced by Submariner).
    Ignore,
    /// Inconsistent: refused.
    Refuse(String),
}

/// Classifies a broker object for import: its name must be `<gateway label>-<clusterID>`, its
/// cluster label (when set) its clusterID, and its name must not also read as one of this
/// cluster's own (`…-<this cluster>`), so that no broker object can stand in for a local one.
pub fn classify<'a>(obj: &'a GatewayExIp, cluster_id: &str) -> Remote<'a> {
    let Some(origin) = obj.labels().get(SUBMARINER_CLUSTER_ID).map(String::as_str) else {
        return Remote::Ignore;
    };
    if origin == cluster_id || origin.is_empty() {
        return Remote::Ignore;
    }
    let name = obj.name_any();
    if let Some(cluster) = obj.labels().get(LABEL_CLUSTER)
        && cluster != origin
    {
        return Remote::Refuse(format!(
            "its {LABEL_CLUSTER} label {cluster:?} disagrees with its {SUBMARINER_CLUSTER_ID} label {origin:?}"
        ));
    }
    let Some(gateway) = obj.labels().get(LABEL_GATEWAY).filter(|g| !g.is_empty()) else {
        return Remote::Refuse(format!("it has no {LABEL_GATEWAY} label"));
    };
    if name != gateway_exip_name(gateway, origin) {
        return Remote::Refuse(format!(
            "its name disagrees with its labels (expected {})",
            gateway_exip_name(gateway, origin)
        ));
    }
    if name.ends_with(&format!("-{cluster_id}")) {
        return Remote::Refuse(format!(
            "its name also reads as a gateway of this cluster ({cluster_id:?}): ambiguous"
        ));
    }
    Remote::Import { origin }
}

/// Which API servers keep a GatewayExIp's `spec.tunnels` ([`crate::pruning`]): copies written
/// to one that does not are written without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    pub local: bool,
    pub broker: bool,
}

impl Default for Kept {
    fn default() -> Self {
        Self {
            local: true,
            broker: true,
        }
    }
}

fn without_tunnels_unless(kept: bool, mut obj: GatewayExIp) -> GatewayExIp {
    if !kept {
        obj.spec.tunnels.clear();
    }
    obj
}

/// One sync pass over the local namespace's objects and the broker namespace's objects.
pub fn plan(
    cluster_id: &str,
    local_ns: &str,
    broker_ns: &str,
    local: &[GatewayExIp],
    broker: &[GatewayExIp],
    policy: &ImportPolicy,
    kept: Kept,
) -> Plan {
    let mut p = Plan::default();
    let local_by_name: BTreeMap<String, &GatewayExIp> =
        local.iter().map(|o| (o.name_any(), o)).collect();
    let broker_by_name: BTreeMap<String, &GatewayExIp> =
        broker.iter().map(|o| (o.name_any(), o)).collect();

    // local → broker
    for obj in local.iter().filter(|o| o.is_own(cluster_id)) {
        let want = without_tunnels_unless(kept.broker, export_copy(obj, cluster_id, broker_ns));
        let name = obj.name_any();
        match broker_by_name.get(&name) {
            Some(b)
                if b.labels().get(SUBMARINER_CLUSTER_ID).map(String::as_str)
                    != Some(cluster_id) =>
            {
                p.skipped.push(Skipped {
                    direction: Direction::ToBroker,
                    name,
                    result: "conflict",
                    reason: format!(
                        "the broker already has an object of this name from cluster {:?}",
                        b.labels()
                            .get(SUBMARINER_CLUSTER_ID)
                            .cloned()
                            .unwrap_or_default()
                    ),
                });
            }
            Some(b) if up_to_date(b, &want) => {}
            Some(_) => p.to_broker.push(Op::Apply(want)),
            None => p.to_broker.push(Op::Create(want)),
        }
    }
    for b in broker
        .iter()
        .filter(|b| b.labels().get(SUBMARINER_CLUSTER_ID).map(String::as_str) == Some(cluster_id))
    {
        let name = b.name_any();
        if !local_by_name
            .get(&name)
            .is_some_and(|l| l.is_own(cluster_id))
        {
            p.to_broker.push(Op::Delete {
                name,
                namespace: broker_ns.into(),
            });
        }
    }

    // broker → local, in name order (so the caps keep the same objects from pass to pass)
    let mut imported: BTreeMap<String, &str> = BTreeMap::new();
    let mut caps = Caps::new(policy);
    let mut broker: Vec<&GatewayExIp> = broker.iter().collect();
    broker.sort_by_key(|b| b.name_any());
    for b in broker {
        let name = b.name_any();
        let checked = match classify(b, cluster_id) {
            Remote::Ignore => continue,
            Remote::Refuse(reason) => Err(reason),
            Remote::Import { origin } => match policy
                .refusal(b, origin)
                .or_else(|| caps.take(origin).err())
            {
                Some(reason) => Err(reason),
                None => Ok(origin),
            },
        };
        let origin = match checked {
            Ok(origin) => origin,
            Err(reason) => {
                p.skipped.push(Skipped {
                    direction: Direction::FromBroker,
                    name,
                    result: "refused",
                    reason,
                });
                continue;
            }
        };
        imported.insert(name.clone(), origin);
        let want = without_tunnels_unless(kept.local, import_copy(b, local_ns));
        match local_by_name.get(&name) {
            Some(l) if copy_origin(l, cluster_id) != Some(origin) => p.skipped.push(Skipped {
                direction: Direction::FromBroker,
                name,
                result: "conflict",
                reason: "a local object of this name is not a copy of this cluster's object; it is never overwritten".into(),
            }),
            Some(l) if up_to_date(l, &want) => {}
            _ => p.from_broker.push(Op::Apply(want)),
        }
    }
    for l in local {
        let name = l.name_any();
        if let Some(origin) = copy_origin(l, cluster_id)
            && imported.get(&name) != Some(&origin)
        {
            p.from_broker.push(Op::Delete {
                name,
                namespace: local_ns.into(),
            });
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use multivpc_api::{GatewayExIpSpec, keys::LABEL_GATEWAY};

    fn obj(name: &str, ns: &str, labels: &[(&str, &str)], ip: &str) -> GatewayExIp {
        GatewayExIp {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
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

    fn own(name: &str, ip: &str) -> GatewayExIp {
        obj(
            name,
            "kube-system",
            &[(LABEL_CLUSTER, "c1"), (LABEL_GATEWAY, "g")],
            ip,
        )
    }

    fn on_broker(name: &str, origin: &str, ip: &str) -> GatewayExIp {
        let gateway = name.strip_suffix(&format!("-{origin}")).unwrap_or("g");
        obj(
            name,
            "brk",
            &[
                (LABEL_CLUSTER, origin),
                (LABEL_GATEWAY, gateway),
                (SUBMARINER_CLUSTER_ID, origin),
                (SUBMARINER_ORIGIN_NAMESPACE, "kube-system"),
            ],
            ip,
        )
    }

    /// Every test cluster's Globalnet CIDR recorded on the broker; no local ranges; wide caps.
    fn policy() -> ImportPolicy {
        let cidr: multivpc_api::net::Ipv4Cidr = "242.1.0.0/16".parse().unwrap();
        ImportPolicy {
            broker_globalnet: ["c2", "c3", "c8", "c9"]
                .map(|c| (c.to_string(), vec![cidr]))
                .into(),
            local_ranges: vec![],
            max_per_cluster: 100,
            max_total: 100,
        }
    }

    fn run(local: &[GatewayExIp], broker: &[GatewayExIp]) -> Plan {
        plan(
            "c1",
            "kube-system",
            "brk",
            local,
            broker,
            &policy(),
            Kept::default(),
        )
    }

    fn refused(p: &Plan, name: &str) -> String {
        p.skipped
            .iter()
            .find(|s| s.name == name && s.result == "refused")
            .map(|s| s.reason.clone())
            .unwrap_or_else(|| panic!("{name} not refused: {p:?}"))
    }

    #[test]
    fn names_that_could_stand_for_a_local_gateway_are_refused() {
        // Cluster "gw-c1" publishes gateway "vpc1": "vpc1-gw-c1" also reads as c1's gateway
        // "vpc1-gw". It must never be imported under that name.
        let mut forged = on_broker("vpc1-gw-c1", "gw-c1", "172.50.0.9");
        forged
            .labels_mut()
            .insert(LABEL_ACTIVE_GATEWAY.into(), "victim-gw".into());
        let mut p = policy();
        p.broker_globalnet
            .insert("gw-c1".into(), vec!["242.1.0.0/16".parse().unwrap()]);
        let plan = plan(
            "c1",
            "kube-system",
            "brk",
            &[],
            &[forged],
            &p,
            Kept::default(),
        );
        assert!(plan.from_broker.is_empty(), "{plan:?}");
        assert!(refused(&plan, "vpc1-gw-c1").contains("ambiguous"));
        // A name that disagrees with the gateway label, or no gateway label at all.
        let mut wrong = on_broker("a-b-c2", "c2", "172.50.0.9");
        wrong.labels_mut().insert(LABEL_GATEWAY.into(), "a".into());
        let mut unlabelled = on_broker("x-c2", "c2", "172.50.0.9");
        unlabelled.labels_mut().remove(LABEL_GATEWAY);
        let plan = run(&[], &[wrong, unlabelled]);
        assert!(plan.from_broker.is_empty(), "{plan:?}");
        assert!(refused(&plan, "a-b-c2").contains("expected a-c2"));
        assert!(refused(&plan, "x-c2").contains("no multivpc.kubeovn.ustc.io/gateway"));
    }

    #[test]
    fn copies_carry_only_allowed_labels_and_no_annotations() {
        let mut remote = on_broker("g-c2", "c2", "172.50.0.9");
        remote.labels_mut().insert("evil.io/x".into(), "1".into());
        remote
            .annotations_mut()
            .insert("big".into(), "x".repeat(200_000));
        let copy = import_copy(&remote, "kube-system");
        assert!(copy.metadata.annotations.is_none());
        assert!(!copy.labels().contains_key("evil.io/x"));
        assert_eq!(copy.labels()[LABEL_GATEWAY], "g");
    }

    #[test]
    fn refused_values_and_floods_produce_no_copy_and_stale_copies_go() {
        let mut p = policy();
        p.max_per_cluster = 2;
        // 0.0.0.0/0, a CIDR the broker does not record for c2, then a flood from c3.
        let mut wide = on_broker("wide-c2", "c2", "172.50.0.9");
        wide.spec.globalnetcidr = "0.0.0.0/0".into();
        let mut other = on_broker("other-c2", "c2", "172.50.0.9");
        other.spec.globalnetcidr = "242.7.0.0/16".into();
        let mut broker = vec![wide, other, on_broker("good-c2", "c2", "172.50.0.9")];
        broker.extend((0..5).map(|i| on_broker(&format!("f{i}-c3"), "c3", "172.50.0.8")));
        // A copy imported earlier whose source is now refused is deleted.
        let stale = import_copy(&on_broker("wide-c2", "c2", "172.50.0.9"), "kube-system");
        let plan = plan(
            "c1",
            "kube-system",
            "brk",
            &[stale],
            &broker,
            &p,
            Kept::default(),
        );
        let applied: Vec<String> = plan
            .from_broker
            .iter()
            .filter_map(|op| match op {
                Op::Apply(o) | Op::Create(o) => Some(o.name_any()),
                Op::Delete { .. } => None,
            })
            .collect();
        assert_eq!(applied, ["f0-c3", "f1-c3", "good-c2"]);
        assert!(refused(&plan, "wide-c2").contains("default route"));
        assert!(refused(&plan, "other-c2").contains("not the Globalnet CIDR"));
        assert!(refused(&plan, "f2-c3").contains("--max-imported-per-cluster"));
        assert!(plan.from_broker.contains(&Op::Delete {
            name: "wide-c2".into(),
            namespace: "kube-system".into()
        }));
    }

    #[test]
    fn own_objects_are_exported_with_submariner_labels() {
        let p = run(&[own("g-c1", "172.50.0.2")], &[]);
        assert_eq!(
            p.to_broker,
            vec![Op::Create(on_broker("g-c1", "c1", "172.50.0.2"))]
        );
        assert!(p.from_broker.is_empty() && p.skipped.is_empty());
        // Once there: no write (no echo back either).
        let p = run(
            &[own("g-c1", "172.50.0.2")],
            &[on_broker("g-c1", "c1", "172.50.0.2")],
        );
        assert_eq!(p, Plan::default());
        // Changed locally: updated on the broker.
        let p = run(
            &[own("g-c1", "172.50.0.3")],
            &[on_broker("g-c1", "c1", "172.50.0.2")],
        );
        assert_eq!(
            p.to_broker,
            vec![Op::Apply(on_broker("g-c1", "c1", "172.50.0.3"))]
        );
    }

    #[test]
    fn deleted_own_objects_leave_the_broker() {
        let p = run(&[], &[on_broker("g-c1", "c1", "172.50.0.2")]);
        assert_eq!(
            p.to_broker,
            vec![Op::Delete {
                name: "g-c1".into(),
                namespace: "brk".into()
            }]
        );
    }

    #[test]
    fn remote_objects_are_imported_updated_and_deleted() {
        let remote = on_broker("g-c2", "c2", "172.50.0.9");
        let p = run(&[], std::slice::from_ref(&remote));
        let copy = import_copy(&remote, "kube-system");
        assert_eq!(p.from_broker, vec![Op::Apply(copy.clone())]);
        assert!(p.to_broker.is_empty(), "a copy is never exported back");
        assert_eq!(copy.labels()[SUBMARINER_CLUSTER_ID], "c2");
        assert_eq!(copy.namespace().as_deref(), Some("kube-system"));
        // In place: nothing to do; the copy is not exported (no echo).
        assert_eq!(run(std::slice::from_ref(&copy), &[remote]), Plan::default());
        // Changed remotely.
        let moved = on_broker("g-c2", "c2", "172.50.0.10");
        assert_eq!(
            run(std::slice::from_ref(&copy), std::slice::from_ref(&moved)).from_broker,
            vec![Op::Apply(import_copy(&moved, "kube-system"))]
        );
        // Gone from the broker: the copy goes.
        assert_eq!(
            run(&[copy], &[]).from_broker,
            vec![Op::Delete {
                name: "g-c2".into(),
                namespace: "kube-system".into()
            }]
        );
    }

    #[test]
    fn own_exports_on_the_broker_are_not_imported() {
        let p = run(
            &[own("g-c1", "172.50.0.2")],
            &[on_broker("g-c1", "c1", "172.50.0.2")],
        );
        assert!(p.from_broker.is_empty());
        // Objects without a clusterID are nobody's export: ignored both ways.
        let stray = obj("x-c9", "brk", &[], "1.2.3.4");
        assert_eq!(run(&[], &[stray]), Plan::default());
    }

    #[test]
    fn a_local_object_is_never_overwritten_by_a_remote_copy() {
        // A local own object and a broker object of the same name from c2 (ambiguous names
        // such as "a-b-c2"): the local one stays, the conflict is reported.
        let local = obj(
            "a-c2",
            "kube-system",
            &[(LABEL_CLUSTER, "c1")],
            "172.50.0.2",
        );
        let remote = on_broker("a-c2", "c2", "172.50.0.9");
        let p = run(std::slice::from_ref(&local), &[remote]);
        assert!(p.from_broker.is_empty());
        assert!(
            p.skipped
                .iter()
                .any(|s| s.direction == Direction::FromBroker && s.result == "conflict")
        );
        // A hand-made object with no labels is not ours to replace either, nor to delete.
        let hand = obj("g-c2", "kube-system", &[], "9.9.9.9");
        let p = run(&[hand], &[on_broker("g-c2", "c2", "172.50.0.9")]);
        assert!(p.from_broker.is_empty());
        assert_eq!(p.skipped[0].result, "conflict");
        let p = run(&[obj("h", "kube-system", &[], "9.9.9.9")], &[]);
        assert_eq!(p, Plan::default());
        // A copy of c3's object is not replaced by c2's object of the same name.
        let c3 = obj(
            "x-c2",
            "kube-system",
            &[(SUBMARINER_CLUSTER_ID, "c3")],
            "1.1.1.1",
        );
        let p = run(&[c3], &[on_broker("x-c2", "c2", "2.2.2.2")]);
        assert!(p.from_broker.iter().all(|op| !matches!(op, Op::Apply(_))));
    }

    #[test]
    fn a_broker_name_taken_by_another_cluster_is_not_overwritten() {
        let theirs = on_broker("g-c1", "c2", "172.50.0.9");
        let p = run(&[own("g-c1", "172.50.0.2")], &[theirs]);
        assert!(p.to_broker.is_empty());
        assert!(
            p.skipped
                .iter()
                .any(|s| s.direction == Direction::ToBroker && s.result == "conflict")
        );
    }

    #[test]
    fn foreign_objects_disagreeing_with_their_name_are_refused() {
        let liar = on_broker("g-c3", "c2", "172.50.0.9");
        assert!(matches!(classify(&liar, "c1"), Remote::Refuse(_)));
        let mut mislabelled = on_broker("g-c2", "c2", "172.50.0.9");
        mislabelled
            .labels_mut()
            .insert(LABEL_CLUSTER.into(), "c3".into());
        assert!(matches!(classify(&mislabelled, "c1"), Remote::Refuse(_)));
        let p = run(&[], &[liar]);
        assert!(p.from_broker.is_empty());
        assert_eq!(p.skipped[0].result, "refused");
        assert_eq!(p.skipped[0].direction, Direction::FromBroker);
        // A stale copy of a now-refused object is removed.
        let stale = import_copy(&on_broker("g-c3", "c2", "1.1.1.1"), "kube-system");
        let p = run(
            &[stale],
            &[on_broker("g-c3", "c2", "172.50.0.9").tap_label()],
        );
        assert!(p.from_broker.contains(&Op::Delete {
            name: "g-c3".into(),
            namespace: "kube-system".into()
        }));
    }

    trait TapLabel {
        fn tap_label(self) -> Self;
    }
    impl TapLabel for GatewayExIp {
        fn tap_label(mut self) -> Self {
            self.labels_mut().insert(LABEL_CLUSTER.into(), "c3".into());
            self
        }
    }
}

#[cfg(test)]
mod convergence {
    //! Property: whatever the starting state (stale copies, stale broker objects), repeated
    //! passes of both clusters reach a fixpoint where the broker holds exactly each cluster's
    //! own objects once, each cluster holds the other's as copies, and own objects are never
    //! touched by the sync.

    use std::collections::BTreeMap;

    use super::*;
    use multivpc_api::{GatewayExIpSpec, keys::LABEL_GATEWAY};
    use proptest::prelude::*;

    const CLUSTERS: [&str; 2] = ["c1", "c2"];
    type Ns = BTreeMap<String, GatewayExIp>;

    fn object(gw: u8, cluster: &str, ip: u8, ns: &str, labels: &[(&str, &str)]) -> GatewayExIp {
        let mut l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.insert(LABEL_GATEWAY.into(), format!("g{gw}"));
        GatewayExIp {
            metadata: ObjectMeta {
                name: Some(format!("g{gw}-{cluster}")),
                namespace: Some(ns.into()),
                labels: Some(l),
                ..Default::default()
            },
            spec: GatewayExIpSpec {
                externalip: format!("172.50.0.{ip}"),
                globalnetcidr: "242.1.0.0/16".into(),
                ..Default::default()
            },
        }
    }

    fn apply(ns: &mut Ns, ops: &[Op]) {
        for op in ops {
            match op {
                Op::Apply(o) | Op::Create(o) => {
                    ns.insert(o.name_any(), o.clone());
                }
                Op::Delete { name, .. } => {
                    ns.remove(name);
                }
            }
        }
    }

    fn arb_state() -> impl Strategy<Value = ([Ns; 2], Ns)> {
        let own = prop::collection::btree_map(0u8..4, 1u8..6, 0..4);
        let stale_copies = prop::collection::btree_map(0u8..4, 1u8..6, 0..4);
        let stale_broker = prop::collection::vec((0u8..4, 0usize..2, 1u8..6), 0..5);
        (
            own.clone(),
            own,
            stale_copies.clone(),
            stale_copies,
            stale_broker,
        )
            .prop_map(|(own1, own2, stale1, stale2, broker)| {
                let mut locals = [Ns::new(), Ns::new()];
                for (i, (own, stale)) in [(own1, stale1), (own2, stale2)].into_iter().enumerate() {
                    let me = CLUSTERS[i];
                    let other = CLUSTERS[1 - i];
                    for (gw, ip) in stale {
                        let o = object(
                            gw,
                            other,
                            ip,
                            "kube-system",
                            &[(LABEL_CLUSTER, other), (SUBMARINER_CLUSTER_ID, other)],
                        );
                        locals[i].insert(o.name_any(), o);
                    }
                    for (gw, ip) in own {
                        let o = object(gw, me, ip, "kube-system", &[(LABEL_CLUSTER, me)]);
                        locals[i].insert(o.name_any(), o);
                    }
                }
                let mut b = Ns::new();
                for (gw, c, ip) in broker {
                    let o = object(
                        gw,
                        CLUSTERS[c],
                        ip,
                        "brk",
                        &[
                            (LABEL_CLUSTER, CLUSTERS[c]),
                            (SUBMARINER_CLUSTER_ID, CLUSTERS[c]),
                            (SUBMARINER_ORIGIN_NAMESPACE, "kube-system"),
                        ],
                    );
                    b.insert(o.name_any(), o);
                }
                (locals, b)
            })
    }

    proptest! {
        #[test]
        fn both_clusters_converge_without_loss_echo_or_duplicates((mut locals, mut broker) in arb_state()) {
            let owns: Vec<Ns> = (0..2)
                .map(|i| {
                    locals[i]
                        .iter()
                        .filter(|(_, o)| o.is_own(CLUSTERS[i]))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .collect();
            let mut rounds = 0;
            loop {
                let mut changed = false;
                for i in 0..2 {
                    let local: Vec<_> = locals[i].values().cloned().collect();
                    let remote: Vec<_> = broker.values().cloned().collect();
                    let policy = ImportPolicy {
                        broker_globalnet: CLUSTERS
                            .map(|c| (c.to_string(), vec!["242.1.0.0/16".parse().unwrap()]))
                            .into(),
                        local_ranges: vec![],
                        max_per_cluster: 100,
                        max_total: 100,
                    };
                    let p = plan(CLUSTERS[i], "kube-system", "brk", &local, &remote, &policy, Kept::default());
                    prop_assert!(p.skipped.is_empty(), "{:?}", p.skipped);
                    changed |= !p.to_broker.is_empty() || !p.from_broker.is_empty();
                    apply(&mut broker, &p.to_broker);
                    apply(&mut locals[i], &p.from_broker);
                }
                if !changed {
                    break;
                }
                rounds += 1;
                prop_assert!(rounds <= 2, "no fixpoint after {rounds} rounds");
            }
            for i in 0..2 {
                let me = CLUSTERS[i];
                let other = CLUSTERS[1 - i];
                // Own objects untouched by the sync.
                for (name, o) in &owns[i] {
                    prop_assert_eq!(locals[i].get(name), Some(o));
                }
                // Exactly the other cluster's own objects as copies, nothing else.
                let copies: BTreeMap<_, _> = locals[i]
                    .iter()
                    .filter(|(_, o)| copy_origin(o, me).is_some())
                    .map(|(k, o)| (k.clone(), o.spec.clone()))
                    .collect();
                let want: BTreeMap<_, _> = owns[1 - i]
                    .iter()
                    .map(|(k, o)| (k.clone(), o.spec.clone()))
                    .collect();
                prop_assert_eq!(copies, want);
                prop_assert!(locals[i].values().all(|o| copy_origin(o, me).is_none_or(|c| c == other)));
            }
            // The broker holds each own object once, from its origin.
            let mut want = Ns::new();
            for i in 0..2 {
                for o in owns[i].values() {
                    want.insert(o.name_any(), export_copy(o, CLUSTERS[i], "brk"));
                }
            }
            prop_assert_eq!(broker.len(), want.len());
            for (name, o) in &want {
                prop_assert!(broker.get(name).is_some_and(|b| up_to_date(b, o)));
            }
        }
    }
}
