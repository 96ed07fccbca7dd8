//! Writing a custom resource's status by server-side apply, as its controller's field manager.

use std::{collections::HashSet, sync::Mutex};

use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// Fields left out at most per write: each needs one refused request to find.
const MAX_UNDECLARED: usize = 8;

/// Applies `status` to `name`'s status subresource as field manager `manager` (forced: the
/// controller owns its status fields).
///
/// An API server whose CRD predates a status field (Helm installs CRDs but never upgrades
/// them) refuses the whole apply ("field not declared in schema"). The fields it names are
/// then left out and the apply retried, with a warning once per field, so that an upgraded
/// controller on an old CRD still reports everything else.
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    manager: &str,
    status: &impl Serialize,
) -> kube::Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let mut left_out = 0;
    loop {
        // Boxed, here and in the other API calls a reconcile makes: a reconcile in flight
        // mostly waits (for its pod's exec), and an API call's state inlined into its state
        // machine would be reserved all that time in each of them.
        let result = Box::pin(api.patch_status(
            name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&patch),
        ))
        .await;
        let err = match result {
            Err(kube::Error::Api(ref s)) if left_out < MAX_UNDECLARED => s.message.clone(),
            other => return other,
        };
        let undeclared = undeclared_status_fields(&err);
        let removed: Vec<String> = undeclared
            .into_iter()
            .filter(|path| remove_path(&mut patch, path))
            .collect();
        if removed.is_empty() {
            return result;
        }
        left_out += removed.len();
        warn_once(K::kind(&()).as_ref(), &removed);
    }
}

/// The `.status…` fields an API server's refusal says its schema lacks, as paths of the patch
/// (`status.health`).
fn undeclared_status_fields(message: &str) -> Vec<String> {
    const SUFFIX: &str = ": field not declared in schema";
    message
        .match_indices(SUFFIX)
        .filter_map(|(end, _)| {
            let start = message[..end].rfind(".status.")?;
            let path = &message[start + 1..end];
            path.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
                .then(|| path.to_owned())
        })
        .collect()
}

/// Removes the object field at dotted `path` from `value`; whether it was there.
fn remove_path(value: &mut Value, path: &str) -> bool {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else {
        return false;
    };
    let mut node = value;
    for p in parts {
        match node.get_mut(p) {
            Some(next) => node = next,
            None => return false,
        }
    }
    node.as_object_mut()
        .is_some_and(|o| o.remove(last).is_some())
}

fn warn_once(kind: &str, fields: &[String]) {
    static WARNED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    let warned = warned.get_or_insert_with(HashSet::new);
    for field in fields {
        if warned.insert(format!("{kind}.{field}")) {
            tracing::warn!(
                kind,
                field,
                "the API server's {kind} CRD predates {field}: written without it (Helm does not upgrade CRDs; apply the chart's crds/)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undeclared_fields_are_read_from_the_refusal_and_left_out() {
        let one = "failed to create typed patch object (ns/vx1; kubeovn.ustc.io/v1, Kind=VpcNatTunnel): .status.health: field not declared in schema";
        assert_eq!(undeclared_status_fields(one), ["status.health"]);
        let two = "failed to create typed patch object (ns/vx1; kubeovn.ustc.io/v1, Kind=VpcNatTunnel): errors:\n  .status.health: field not declared in schema\n  .status.mtu: field not declared in schema";
        assert_eq!(
            undeclared_status_fields(two),
            ["status.health", "status.mtu"]
        );
        assert!(undeclared_status_fields("etcdserver: request timed out").is_empty());
        // Only status fields, and only plain paths.
        assert!(undeclared_status_fields(".spec.x: field not declared in schema").is_empty());
        assert!(undeclared_status_fields(".status.a[0]: field not declared in schema").is_empty());

        let mut patch = serde_json::json!({"kind": "VpcNatTunnel", "status": {"mtu": 1450, "health": {"window": 3}}});
        assert!(remove_path(&mut patch, "status.health"));
        assert!(!remove_path(&mut patch, "status.health"), "gone already");
        assert!(!remove_path(&mut patch, "status.nothing.here"));
        assert_eq!(
            patch,
            serde_json::json!({"kind": "VpcNatTunnel", "status": {"mtu": 1450}})
        );
    }
}
